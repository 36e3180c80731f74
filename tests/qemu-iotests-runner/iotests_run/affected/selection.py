"""`--affected-by REV` / `--affected-by-diff FILE`: run only what a change can affect.

A diff's hunks are mapped, on their old side, onto the functions of the coverage map
(coverage_map.py); a run is affected when it executed one of the changed functions. The rules
err on the side of running (README, "Running what a change affects"):

- a hunk in a mapped source file but outside every function of the map (a comment above a
  function, a return type on the line before its name, a macro, a struct, a static table), a
  file not in the map (headers without inline functions, build files, configure, qapi, a new
  file), and a changed function the counters cannot tell about: every run;
- a file changed by several sections of the diff (a series whose patches touch it one after the
  other: their line numbers are not all the base's), a deleted or renamed mapped file: all of
  that file's functions;
- a test, or one of its reference outputs: that test's runs;
- common.rc or common.config: every bash test; iotests.py or QEMU's python/ package: every Python
  test; another helper of tests/qemu-iotests: the tests naming it (through other helpers too);
  check, testenv.py, testrunner.py and the rest of the iotests machinery, and this runner: every run;
- a run the map does not hold (another format, a new test): that run.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from iotests_run.affected import coverage_map
from iotests_run.affected.coverage_map import CoverageMap, Span, source_digest
from iotests_run.errors import UsageError
from iotests_run.model import Outcome, Result, Run
from iotests_run.plan.history import history_key
from iotests_run.text import printable
from iotests_run.tree.discovery import Catalog

IOTESTS = "tests/qemu-iotests/"
RUNNER = "tests/qemu-iotests-runner/"
BASH_COMMON = {"common.rc", "common.config"}
PYTHON_COMMON = {"iotests.py"}
MAX_DIFF_BYTES = 64 << 20


@dataclass(frozen=True)
class Hunk:
    start: int  # first line of the old side; for a pure insertion, the line it follows (0: the top)
    count: int  # lines of the old side replaced or removed; 0: lines inserted only

    def lines(self) -> range:
        return range(self.start, self.start + self.count)


@dataclass
class FileChange:
    old: str | None  # None: a new file
    new: str | None  # None: a deleted file
    hunks: list[Hunk] = field(default_factory=list)
    sections: int = 1  # how many sections of the diff change this file

    @property
    def path(self) -> str:
        return self.old or self.new or ""


_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+\d+(?:,(\d+))? @@")


def _strip(name: str) -> str | None:
    name = name.split("\t", 1)[0].strip()
    if name == "/dev/null":
        return None
    if name.startswith('"'):
        raise UsageError(f"diff names a file git had to quote: {printable(name)[:100]}")
    return name[2:] if name[:2] in ("a/", "b/") else name


def parse_diff(text: str) -> list[FileChange]:
    """The files a unified diff changes (git's or diff -u's), each with its hunks' old-side ranges.
    Text around the sections (a mail's headers and message) is skipped; a hunk's body is consumed by
    its line counts, so that a removed line starting with "-- " is never taken for a file header."""
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
                raise UsageError(f"diff line {i}: not a hunk header: {printable(line)[:80]}")
            old_count = 1 if m.group(2) is None else int(m.group(2))
            new_count = 1 if m.group(3) is None else int(m.group(3))
            current.hunks.append(Hunk(int(m.group(1)), old_count))
            while i < len(lines) and (old_count > 0 or new_count > 0):
                body = lines[i]
                i += 1
                if body.startswith("\\"):  # "\ No newline at end of file"
                    continue
                kind = body[:1]
                old_count -= kind in (" ", "-", "")
                new_count -= kind in (" ", "+", "")
    return list(changes.values())


def _section(changes: dict[str, FileChange], change: FileChange) -> FileChange:
    known = changes.get(change.path)
    if known is None:
        changes[change.path] = change
        return change
    known.sections += 1
    return known


@dataclass(frozen=True)
class Affected:
    """What the change selects: every run (with why), or the changed functions and tests."""

    everything: str | None  # why every run is affected, or None
    functions: frozenset[int]  # indexes into the map's table
    tests: Mapping[str, str]  # test key -> why
    notes: tuple[str, ...] = ()

    def why(self, run: Run, cmap: CoverageMap, table: Sequence[tuple[str, Span]]) -> str | None:
        """Why this run is affected, or None when it is not."""
        if self.everything:
            return self.everything
        if run.test.key in self.tests:
            return self.tests[run.test.key]
        executed = cmap.runs.get(history_key(run))
        if executed is None:
            return "not in the coverage map"
        hit = sorted(self.functions & executed)
        if hit:
            path, span = table[hit[0]]
            more = f" and {len(hit) - 1} more changed function(s)" if len(hit) > 1 else ""
            return f"executes {span.name} ({path}){more}"
        return None


def _helpers_closure(iotests: Path, changed: set[str]) -> set[str]:
    """Changed helper files of tests/qemu-iotests, and the helpers that name them, transitively."""
    helpers = {p.name: _read(p) for p in iotests.iterdir()
               if p.is_file() and not re.fullmatch(r"\d{3}(\.out.*)?", p.name) and p.name != "group.local"}
    found = set(changed)
    grew = True
    while grew:
        grew = False
        for name, text in helpers.items():
            if name not in found and any(_names(text, h) for h in found):
                found.add(name)
                grew = True
    return found


def _names(text: str, helper: str) -> bool:
    stem = helper.rsplit(".", 1)[0] if helper.endswith(".py") else helper
    return helper in text or bool(re.search(rf"\b(import|from)\s+{re.escape(stem)}\b", text))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


_MACHINERY = {"check", "testenv.py", "testrunner.py", "findtests.py", "linters.py", "meson.build", "group",
              "group.local"}


def _test_of(rel: str, catalog: Catalog) -> str | None:
    """The test key a file of tests/qemu-iotests belongs to (the test or one of its outputs)."""
    name = re.sub(r"\.out(\..*)?$", "", rel)
    return name if name in catalog.tests else None


def affected(changes: Iterable[FileChange], cmap: CoverageMap, catalog: Catalog) -> Affected:
    table = cmap.table()
    index = {(path, span.name): i for i, (path, span) in enumerate(table)}
    functions: set[int] = set()
    tests: dict[str, str] = {}
    helpers: set[str] = set()
    for change in changes:
        path = change.path
        if path.startswith(RUNNER):
            return Affected(f"this runner changed ({path})", frozenset(), {})
        if path.startswith(IOTESTS):
            rel = path[len(IOTESTS):]
            test = _test_of(rel, catalog) or (_test_of(change.new[len(IOTESTS):], catalog)
                                              if change.new and change.new.startswith(IOTESTS) else None)
            if test is not None:
                tests[test] = f"the test changed ({path})"
            elif rel in _MACHINERY or "/" in rel:
                return Affected(f"the iotests machinery changed ({path})", frozenset(), {})
            else:
                helpers.add(rel)
            continue
        if path.startswith("python/"):
            helpers.add("iotests.py")
            continue
        spans = cmap.files.get(path)
        if spans is None:
            return Affected(f"{path} changed, and it has no functions in the coverage map", frozenset(), {})
        whole = change.sections > 1 or change.old is None or change.new is None or change.old != change.new
        for hunk in change.hunks if not whole else []:
            inside = [i for i, s in enumerate(spans) if _touches(hunk, s.start, s.end)]
            if not _covered(hunk, [spans[i] for i in inside]):
                line = hunk.start if hunk.count else f"{hunk.start}-{hunk.start + 1}"
                return Affected(f"{path}:{line} changed outside any function of the coverage map",
                                frozenset(), {})
            functions.update(index[(path, spans[i].name)] for i in inside)
        if whole:
            functions.update(index[(path, s.name)] for s in spans)
    unknown = functions & cmap.uncounted
    if unknown:
        path, span = table[min(unknown)]
        return Affected(f"{span.name} ({path}) changed, and its counters cannot tell which runs executed it",
                        frozenset(), {})
    if helpers:
        tests.update(_helper_tests(helpers, catalog))
    return Affected(None, frozenset(functions), tests)


def _touches(hunk: Hunk, start: int, end: int) -> bool:
    if hunk.count == 0:  # inserted after line `start`: inside when both neighbours are the function's
        return start <= hunk.start < end
    return hunk.start <= end and start <= hunk.start + hunk.count - 1


def _covered(hunk: Hunk, spans: Sequence[Span]) -> bool:
    if hunk.count == 0:
        return bool(spans)
    lines = set(hunk.lines())
    for span in spans:
        lines -= set(range(span.start, span.end + 1))
    return not lines


def _helper_tests(helpers: set[str], catalog: Catalog) -> dict[str, str]:
    found = _helpers_closure(catalog.iotests, helpers)
    picked: dict[str, str] = {}
    for key, test in catalog.tests.items():
        if (found & BASH_COMMON and not test.python) or (found & PYTHON_COMMON and test.python):
            picked[key] = f"it uses {', '.join(sorted(found & (BASH_COMMON | PYTHON_COMMON)))}, which changed"
            continue
        text = _read(test.path)
        named = sorted(h for h in found if _names(text, h))
        if named:
            picked[key] = f"it uses {named[0]}, which changed"
    return picked


# --- the diff, from git or a file, and whether the map still describes the tree ----------------------------

def _git(source: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = _git_bytes(source, *args)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", errors="replace"),
                                       proc.stderr.decode("utf-8", errors="replace"))


def _git_bytes(source: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=timeout)
    except FileNotFoundError:
        raise UsageError("--affected-by needs git, which is not installed") from None


def diff_against(source: Path, rev: str) -> str:
    """`git diff REV` of the working tree, paths relative to the QEMU source folder."""
    if _git(source, "rev-parse", "--show-toplevel").returncode != 0:
        raise UsageError(f"--affected-by needs a git checkout: {source} is not in one (use --affected-by-diff FILE)")
    if rev.startswith("-") or _git(source, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        raise UsageError(f"--affected-by: unknown revision: {printable(rev)}")
    proc = _git(source, "diff", "--no-color", "--no-ext-diff", "-M", "-U0", "--relative", rev, "--")
    if proc.returncode != 0:
        raise UsageError(f"--affected-by: git diff {printable(rev)} failed: {printable(proc.stderr.strip())[:200]}")
    return proc.stdout


def read_diff(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_DIFF_BYTES:
            raise UsageError(f"--affected-by-diff {path}: larger than {MAX_DIFF_BYTES >> 20} MB")
        return path.read_bytes().decode("utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UsageError(f"--affected-by-diff: no such file: {path}") from None
    except OSError as exc:
        raise UsageError(f"--affected-by-diff: cannot read {path} ({exc.strerror or exc})") from None


def stale_files(cmap: CoverageMap, source: Path, changes: Sequence[FileChange],
                old_text: Mapping[str, bytes] | None) -> list[str]:
    """Mapped files whose text is not the text the map was made from: the tree's files outside the
    diff as they are now, the diff's files as they were at REV (old_text; unknown for a patch file)."""
    changed = {c.path for c in changes} | {c.new for c in changes if c.new}
    stale = []
    for path, digest in sorted(cmap.digests.items()):
        if path in changed:
            if old_text is not None and path in old_text and source_digest(old_text[path]) != digest:
                stale.append(path)
            continue
        try:
            data = (source / path).read_bytes()
        except OSError:
            stale.append(path)
            continue
        if source_digest(data) != digest:
            stale.append(path)
    return stale


def old_texts(source: Path, rev: str, changes: Sequence[FileChange], cmap: CoverageMap) -> dict[str, bytes]:
    texts = {}
    for change in changes:
        if change.old and change.old in cmap.digests:
            proc = _git_bytes(source, "show", f"{rev}:./{change.old}", timeout=60)
            if proc.returncode == 0:
                texts[change.old] = proc.stdout
    return texts


# --- the selection, as planning uses it ---------------------------------------------------------------------

@dataclass(frozen=True)
class ChangeSelection:
    affected: Affected
    cmap: CoverageMap
    source: str  # "git diff REV" or the patch file, for the start line

    @property
    def reason(self) -> str:
        return f"not affected by the change (coverage map of {self.cmap.created[:10]})"

    def split(self, runs: Sequence[Run]) -> tuple[list[Run], list[Result], dict[Run, str]]:
        """The runs the change affects (with why), and the others as not run."""
        table = self.cmap.table()
        kept, dropped, why = [], [], {}
        for run in runs:
            because = self.affected.why(run, self.cmap, table)
            if because is None:
                dropped.append(Result(run, Outcome.NOT_RUN, self.reason))
            else:
                kept.append(run)
                why[run] = f"affected: {because}"
        return kept, dropped, why


def _version(tree: str) -> str:
    return tree.split(" tests:", 1)[0]


def select_for_change(source: Path, catalog: Catalog, tree: str, rev: str | None, diff_file: Path | None,
                      map_file: Path, stale_ok: bool, warn: Callable[[str], None]) -> ChangeSelection:
    """--affected-by REV / --affected-by-diff FILE: the map checked against the tree, the diff mapped."""
    cmap = coverage_map.load(map_file)
    if _version(cmap.tree) != _version(tree):
        raise UsageError(f"coverage map {map_file} is of another tree ({cmap.tree}; this one is {_version(tree)})")
    if rev is not None:
        text, what = diff_against(source, rev), f"git diff {rev}"
    else:
        assert diff_file is not None
        text, what = read_diff(diff_file), str(diff_file)
    changes = parse_diff(text)
    stale = stale_files(cmap, source, changes, old_texts(source, rev, changes, cmap) if rev is not None else None)
    if stale:
        shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        line = (f"coverage map {map_file} ({cmap.created}) is older than the tree's sources: {shown} changed "
                "outside the diff")
        if not stale_ok:
            raise UsageError(f"{line}; make a new map (--coverage-map on a gcov build) or give --affected-by-stale-map")
        warn(f"{line}; used anyway (--affected-by-stale-map)")
    return ChangeSelection(affected(changes, cmap, catalog), cmap, what)
