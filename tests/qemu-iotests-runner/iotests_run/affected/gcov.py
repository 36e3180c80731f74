"""Read gcc's coverage files: which functions a .gcno declares, which of them a .gcda saw run.

Both are record streams of 32-bit little-endian words (gcc's gcov-io.h): a header (magic
"gcno"/"gcda" as a word, version, stamp, and from gcc 12 a checksum), then records of a tag
word, a length word (bytes, from gcc 12) and the payload. What is read here:

- .gcno FUNCTION records: ident, two checksums, name, artificial flag, source file, start line
  and column, end line and column (the function's line range, from gcc 8).
- .gcda FUNCTION records (ident, checksums) each followed by its ARC_COUNTS record: one
  64-bit counter per arc that gcc instrumented; gcc 12 writes a negative length when every
  counter is zero. The instrumented arcs are those off a spanning tree that holds the fake
  exit->entry arc, so a function ran at least once exactly when one of its counters is not
  zero; a function with no counters at all cannot be told (it is reported as uncounted).

Only gcc 12 and later (lengths in bytes) are read; anything else is a GcovError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from iotests_run import inputs
from iotests_run.errors import UsageError

GCNO_MAGIC, GCDA_MAGIC = 0x67636E6F, 0x67636461  # "gcno", "gcda"
TAG_FUNCTION, TAG_ARC_COUNTS = 0x01000000, 0x01A10000
OLDEST = 12  # lengths in bytes and a header checksum since gcc 12
MAX_BYTES = 64 << 20  # one object's notes or counters (QEMU's largest .gcno: a few MB)


class GcovError(Exception):
    """A file that is not gcc 12+ coverage data, or is cut short."""


def _contents(path: Path) -> bytes:
    """A coverage file's bytes: a regular file only, never through a link (the counters are written in
    the run's sandbox, where a test could have put a FIFO or a link in their place), at most MAX_BYTES."""
    try:
        return inputs.read_bytes(path, "coverage data", MAX_BYTES, follow_links=False)
    except UsageError as exc:
        raise GcovError(str(exc)) from None


@dataclass(frozen=True)
class Function:
    ident: int
    name: str
    source: str  # as gcc names it: relative to the compiler's working folder, or absolute
    start: int  # first line (the function's name), 1-based
    end: int  # last line (its closing brace)
    artificial: bool


@dataclass(frozen=True)
class Notes:
    """What one .gcno says: the compiler's working folder and the functions of its object file."""

    cwd: str
    functions: tuple[Function, ...]


def _major(version: int) -> int:
    """gcc's version word: bytes 'B', '2', '2', '*' for 12.2 (first: tens as 'A' + n, second: units)."""
    raw = version.to_bytes(4, "big")
    return (raw[0] - ord("A")) * 10 + (raw[1] - ord("0"))


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def word(self) -> int:
        if self.pos + 4 > len(self.data):
            raise GcovError(f"{self.path}: cut short at byte {self.pos}")
        (value,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> str:
        length = self.word()
        if self.pos + length > len(self.data):
            raise GcovError(f"{self.path}: cut short in a string at byte {self.pos}")
        raw = self.data[self.pos:self.pos + length]
        self.pos += length
        return raw.rstrip(b"\0").decode("utf-8", errors="replace")

    def header(self, magic: int) -> None:
        if self.word() != magic:
            raise GcovError(f"{self.path}: not a {'.gcno' if magic == GCNO_MAGIC else '.gcda'} file")
        major = _major(self.word())
        if major < OLDEST:
            raise GcovError(f"{self.path}: written by gcc {major}; gcc {OLDEST} or later is needed")
        self.word()  # stamp
        self.word()  # checksum


def read_notes(path: Path) -> Notes:
    reader = _Reader(_contents(path), path)
    reader.header(GCNO_MAGIC)
    cwd = reader.string()
    reader.word()  # whether the unit has unexecuted blocks
    functions = []
    while reader.pos + 8 <= len(reader.data):
        tag, length = reader.word(), reader.word()
        end = reader.pos + length
        if tag == TAG_FUNCTION:
            ident = reader.word()
            reader.word(), reader.word()  # the line-number and CFG checksums
            name = reader.string()
            artificial = bool(reader.word())
            source = reader.string()
            start = reader.word()
            reader.word()  # start column
            last = reader.word()
            functions.append(Function(ident, name, source, start, max(start, last), artificial))
        if end > len(reader.data):
            raise GcovError(f"{path}: a record runs past the end of the file")
        reader.pos = end
    return Notes(cwd, tuple(functions))


def read_counts(path: Path) -> dict[int, bool | None]:
    """Each function's ident -> whether it ran (None: it has no counters to tell). An empty file (a
    process killed while it began to write, or another one's file just created) holds nothing."""
    data = _contents(path)
    if not data:
        return {}
    reader = _Reader(data, path)
    reader.header(GCDA_MAGIC)
    ran: dict[int, bool | None] = {}
    current: int | None = None
    while reader.pos + 8 <= len(reader.data):
        tag, length = reader.word(), reader.word()
        if tag == TAG_ARC_COUNTS and length >= 0x80000000:  # all counters zero: -(8 * n) as a word
            if current is not None:
                ran[current] = False
            continue
        end = reader.pos + length
        if end > len(reader.data):
            raise GcovError(f"{path}: a record runs past the end of the file")
        if tag == TAG_FUNCTION:
            current = reader.word() if length >= 4 else None
            if current is not None:
                ran.setdefault(current, None)
        elif tag == TAG_ARC_COUNTS and current is not None:
            counters = reader.data[reader.pos:end]
            ran[current] = bool(counters.strip(b"\0")) if counters else None
        reader.pos = end
    return ran
