"""The coverage map: for every run (test x format x protocol), the functions of QEMU it executed.

Made by `--coverage-map FILE` on a gcov build (tools/build-reference-qemu --coverage): each run's
processes write their counters under the run's own GCOV_PREFIX folder in its sandbox, so runs
side by side never mix them; `Recorder.collect` reads them (gcov.py) as the run ends. The file
(gzip'd JSON) holds, per source file of the QEMU tree, its functions with their line ranges (every
function the build compiled, run or not) and a digest of the file's text, and per run a bitset
over that function table. It is keyed to the tree like the duration history (QEMU version and
test names). `--affected-by` reads it (affected.py).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotests_run import inputs
from iotests_run.errors import UsageError
from iotests_run.files import write_atomically
from iotests_run.inputs import number, relative_parts
from iotests_run.text import printable

FORMAT = "iotests-run coverage map 1"
GCOV_FOLDER = "gcov"  # in each run's sandbox: its GCOV_PREFIX
DEFAULT_FILE = "coverage-map.json.gz"  # in ~/.cache/iotests-run: the map --affected-by reads unless told
MAX_BYTES = 32 << 20  # the gzip'd file (QEMU 7.2's quick runs on two formats: 382 KB)
MAX_INFLATED = 64 << 20  # the JSON it inflates to (JSON's objects take about ten times that in memory)
MAX_FUNCTIONS = 1 << 20  # QEMU 10.0 compiles about 33,000
MAX_EXECUTED = 50_000_000  # functions executed, summed over the runs (about 1,000 to 4,500 per run)
MAX_SOURCE = 64 << 20  # one source file whose digest the map keeps
MAX_LINE = (1 << 32) - 1  # a line number as gcc's notes hold it (32 bits)


def source_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class Span:
    name: str
    start: int
    end: int


@dataclass
class CoverageMap:
    tree: str
    created: str
    files: dict[str, list[Span]]  # source file (relative to the QEMU source) -> its functions
    digests: dict[str, str]  # source file -> digest of its text when the map was made
    runs: dict[str, frozenset[int]]  # history key ("qcow2-file/001") -> indexes into table()
    uncounted: frozenset[int] = frozenset()  # functions without counters: whether they ran is unknown

    def table(self) -> list[tuple[str, Span]]:
        return [(path, span) for path in sorted(self.files) for span in self.files[path]]

    def to_json(self) -> dict[str, Any]:
        size = len(self.table())
        return {"format": FORMAT, "tree": self.tree, "created": self.created,
                "files": {p: [[s.name, s.start, s.end] for s in spans] for p, spans in sorted(self.files.items())},
                "digests": dict(sorted(self.digests.items())),
                "uncounted": sorted(self.uncounted),
                "runs": {k: _bits(v, size) for k, v in sorted(self.runs.items())}}


def _bits(indexes: Iterable[int], size: int) -> str:
    raw = bytearray((size + 7) // 8)
    for i in indexes:
        raw[i // 8] |= 1 << (i % 8)
    return base64.b64encode(bytes(raw)).decode()


def _indexes(text: Any, size: int, what: str) -> frozenset[int]:
    """A run's bitset over the function table: bits beyond the table (or more bytes than it needs) are
    refused here, so that nothing later indexes past the table."""
    if not isinstance(text, str) or len(text) > 4 * ((size + 7) // 8 + 2) // 3 + 4:
        raise UsageError(f"{what}: not a bitset of the map's {size} functions")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise UsageError(f"{what}: not base64") from None
    if len(raw) > (size + 7) // 8 or int.from_bytes(raw, "little") >> size:
        raise UsageError(f"{what}: a bit beyond the map's {size} functions")
    return frozenset(i * 8 + b for i, byte in enumerate(raw) if byte for b in range(8) if byte >> b & 1)


def _field(data: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise UsageError(f"{what} (field {key!r} is not a {kind.__name__})")
    return value


def _spans(path: str, spans: Any, what: str) -> list[Span]:
    relative_parts(path, what)  # a name inside the source tree, never /abs or ../
    if not isinstance(spans, list):
        raise UsageError(f"{what} (the functions of {printable(path)[:100]} are not a list)")
    out = []
    for item in spans:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            raise UsageError(f"{what} (a function of {printable(path)[:100]} is not [name, start, end])")
        start = int(number(item[1], f"{what}: start line of {printable(item[0])[:60]}", 0, MAX_LINE, integer=True))
        end = int(number(item[2], f"{what}: end line of {printable(item[0])[:60]}", start, MAX_LINE, integer=True))
        out.append(Span(item[0], start, end))
    return out


def _parse(data: Any, what: str) -> CoverageMap:
    """The map's JSON, every field checked and every number bounded before anything is built from it."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{what} ({FORMAT!r} expected)")
    raw_files = _field(data, "files", dict, what)
    if sum(len(spans) for spans in raw_files.values() if isinstance(spans, list)) > MAX_FUNCTIONS:
        raise UsageError(f"{what} (more than {MAX_FUNCTIONS} functions)")
    files = {p: _spans(p, spans, what) for p, spans in raw_files.items()}
    size = sum(len(spans) for spans in files.values())
    digests = {}
    for key, digest in _field(data, "digests", dict, what).items():
        relative_parts(key, what)
        if not isinstance(digest, str) or len(digest) > 128:
            raise UsageError(f"{what} (the digest of {printable(key)[:100]} is not a short string)")
        digests[key] = digest
    runs, bits = {}, 0
    for key, text in _field(data, "runs", dict, what).items():
        runs[key] = _indexes(text, size, f"{what}: run {printable(key)[:60]}")
        bits += len(runs[key])
        if bits > MAX_EXECUTED:
            raise UsageError(f"{what} (more than {MAX_EXECUTED} executed functions over its runs)")
    uncounted = data.get("uncounted", [])
    if not isinstance(uncounted, list) or len(uncounted) > size:
        raise UsageError(f"{what} (field 'uncounted' is not a list of the map's functions)")
    unknown = frozenset(int(number(i, f"{what}: uncounted function", 0, size - 1, integer=True)) for i in uncounted)
    tree, created = _field(data, "tree", str, what), _field(data, "created", str, what)
    return CoverageMap(tree, created, files, digests, runs, unknown)


def load(path: Path) -> CoverageMap:
    """A map file, checked; anything else is one UsageError line (a FIFO or a device is refused unread,
    the file and what it inflates to are capped, every number is bounded)."""
    name = printable(str(path))
    if not os.path.lexists(path):
        raise UsageError(f"no coverage map: {name} (make one with --coverage-map on a gcov build)")
    data = inputs.read_bytes(path, "coverage map", MAX_BYTES)
    what = f"{name} is not a coverage map"
    if data[:2] != b"\x1f\x8b":
        raise UsageError(f"{what} (not gzip data)")
    text = inputs.gunzip(data, "coverage map", path, MAX_INFLATED)
    return _parse(inputs.parse_json(text, "coverage map", path), what)


def save(path: Path, cmap: CoverageMap) -> int:
    """Write the map whole or not at all (a temporary file renamed over it); its size in bytes."""
    data = gzip.compress(json.dumps(cmap.to_json(), separators=(",", ":")).encode(), 6)
    write_atomically(path, data)
    return len(data)
