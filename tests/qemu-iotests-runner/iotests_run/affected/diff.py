"""The change, as a unified diff says it (`git diff`, a patch file, a mail with patches): per file its old
and new names and the old side's hunks (`FileChange`, `Hunk`), binary changes marked. Hunks are line
ranges, never sets of lines (a header may claim any count); numbers beyond MAX_LINE are refused."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from iotests_run.errors import UsageError
from iotests_run.text import printable

MAX_LINE = 1 << 31  # a line number or count of a hunk header beyond it is no diff of a source file


@dataclass(frozen=True)
class Hunk:
    start: int  # first line of the old side; for a pure insertion, the line it follows (0: the top)
    count: int  # lines of the old side replaced or removed; 0: lines inserted only

    @property
    def last(self) -> int:
        """The last old-side line replaced or removed (start - 1 for an insertion)."""
        return self.start + self.count - 1


@dataclass
class FileChange:
    old: str | None  # None: a new file
    new: str | None  # None: a deleted file
    hunks: list[Hunk] = field(default_factory=list)
    sections: int = 1  # how many sections of the diff change this file
    binary: bool = False  # a binary change ("GIT binary patch", "Binary files ... differ"): no lines to map

    @property
    def path(self) -> str:
        return self.old or self.new or ""


_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_BINARY = re.compile(r"Binary files (.+) and (.+) differ$")
_BODY = (" ", "-", "+", "\\")  # how a hunk's lines begin (or they are empty: a context line a mailer trimmed)


def _line_number(digits: str | None, lineno: int, source: str) -> int:
    """A hunk header's number, bounded before it is used (a 5000-digit number is no line of a file)."""
    if digits is None:
        return 1
    if len(digits) > 10 or int(digits) > MAX_LINE:
        raise UsageError(f"{source}: line {lineno}: a hunk header's line number beyond {MAX_LINE}: "
                         f"{digits[:20]}{'...' if len(digits) > 20 else ''}")
    return int(digits)


def _strip(name: str) -> str | None:
    name = name.split("\t", 1)[0].strip()
    if name == "/dev/null":
        return None
    if name.startswith('"'):
        raise UsageError(f"diff names a file git had to quote: {printable(name)[:100]}")
    return name[2:] if name[:2] in ("a/", "b/") else name


def parse_diff(text: str, source: str = "diff") -> list[FileChange]:
    """The files a unified diff changes (git's or diff -u's), each with its hunks' old-side ranges.
    Text around the sections (a mail's headers and message) is skipped; a hunk's body is consumed by
    its line counts, so that a removed line starting with "-- " is never taken for a file header (and
    stops at a line no hunk holds, so that a header counting too many lines swallows no other file).
    A binary change is marked so: the map cannot place it. `source` names the diff in messages."""
    changes: dict[str, FileChange] = {}
    current: FileChange | None = None
    headed = False  # a "diff --git" line began the section: the ---/+++ lines that follow are its own
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("diff --git "):
            parts = line[len("diff --git "):].split(" b/", 1)
            a = _strip(parts[0])
            current = _section(changes, FileChange(a, _strip("b/" + parts[1]) if len(parts) == 2 else a))
            headed = True
        elif line.startswith("rename from ") and current is not None:
            current.old = line[len("rename from "):]
        elif line.startswith("rename to ") and current is not None:
            current.new = line[len("rename to "):]
        elif line.startswith("new file mode") and current is not None:
            current.old = None
        elif line.startswith("deleted file mode") and current is not None:
            current.new = None
        elif line == "GIT binary patch" and headed and current is not None:
            current.binary = True
        elif (binary := _BINARY.match(line)) is not None:
            if headed and current is not None:
                current.binary = True
            else:  # diff -r's line for a binary file, no header before it
                old, new = _strip(binary.group(1)), _strip(binary.group(2))
                _section(changes, FileChange(old, new)).binary = True
        elif line.startswith("--- ") and i < len(lines) and lines[i].startswith("+++ "):
            old, new = _strip(line[4:]), _strip(lines[i][4:])
            i += 1
            if not headed or current is None:
                current = _section(changes, FileChange(old, new))
            else:
                current.old, current.new = old, new
            headed = False
        elif line.startswith("@@") and current is not None:
            headed = False
            m = _HUNK.match(line)
            if not m:
                raise UsageError(f"{source}: line {i}: not a hunk header: {printable(line)[:80]}")
            start = _line_number(m.group(1), i, source)
            old_count = _line_number(m.group(2), i, source)
            _line_number(m.group(3), i, source)
            new_count = _line_number(m.group(4), i, source)
            current.hunks.append(Hunk(start, old_count))
            i = _skip_body(lines, i, old_count, new_count)
    return list(changes.values())


def _skip_body(lines: Sequence[str], i: int, old_count: int, new_count: int) -> int:
    """Where a hunk's body ends: after its counts' lines, or at the first line no hunk holds."""
    while i < len(lines) and (old_count > 0 or new_count > 0):
        body = lines[i]
        if body and not body.startswith(_BODY):
            break
        i += 1
        if body.startswith("\\"):  # "\ No newline at end of file"
            continue
        kind = body[:1]
        old_count -= kind in (" ", "-", "")
        new_count -= kind in (" ", "+", "")
    return i


def _section(changes: dict[str, FileChange], change: FileChange) -> FileChange:
    known = changes.get(change.path)
    if known is None:
        changes[change.path] = change
        return change
    known.sections += 1
    return known
