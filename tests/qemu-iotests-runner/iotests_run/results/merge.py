"""`iotests-run merge OUT DIR...`: join the results folders of CI shards into one.

Every input is read and checked, and OUT is checked against them, before anything is
written; then OUT is claimed (results_folder.claim), the shards' runs/ artifacts are copied
in, and one junit.xml, results.json and summary.txt are written there, as a single run would.

Shards of one split (`--shard I/N`, GitLab's `parallel:`) must have computed the same split:
each records a digest of it, and shards that disagree (their duration histories differed, so
runs were missed or doubled) are refused. A shard of the split that is not among the inputs
makes the merge incomplete. Each input keeps its own timeline (meta "shards", each run's
"shard"), and `--history FILE` records the merged runs as a single run would, so that one job
can be the duration cache's only writer.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotests_run.errors import SetupError, UsageError
from iotests_run.inputs import number
from iotests_run.model import Result, RunId, TestCase
from iotests_run.plan import history
from iotests_run.plan.planner import MAX_SHARDS
from iotests_run.results.folder import (
    MAX_INPUTS,
    MAX_RUNS,
    MAX_SECONDS,
    RUNS,
    Claim,
    Recorded,
    claim,
    read_results,
    short_of_room,
)
from iotests_run.results.meta import Meta
from iotests_run.text import printable

# What a shard's artifacts may bring into OUT: a file beyond FILE_BYTES, or beyond TOTAL_BYTES of them all, is
# left out (said, as is every link, FIFO or device met, none followed or read); the tree is at most DEPTH deep.
FILE_BYTES = 512 << 20
TOTAL_BYTES = 8 << 30
MAX_FILES = 1_000_000
DEPTH = 32
SHOWN_WARNINGS = 20  # the first ones, then a count
# Bounds on a shard's metadata: its timeline's samples (one a second), its texts and its command's words.
MAX_SAMPLES = int(MAX_SECONDS)
MAX_CORES = 100_000
TEXT_CHARS = 64 * 1024
MAX_WORDS = 100_000


@dataclass
class Merged:
    results: list[Result]
    meta: Meta
    claim: Claim
    tree: str | None  # the inputs' common duration-history identity, asked for by `--history`
    warnings: list[str] = field(default_factory=list)  # artifacts left out of OUT, the first SHOWN_WARNINGS
    left_out: int = 0  # how many were


# A shard's metadata: every field merge or the reports read is checked before it is used --------------

def _where(shard: Recorded, name: str) -> str:
    return f"merge: {shard.folder / 'results.json'}: {name}"


def _text(value: Any, where: str) -> str:
    """A one-line printable string of at most TEXT_CHARS (names, dates, paths, digests)."""
    if not isinstance(value, str) or len(value) > TEXT_CHARS or printable(value) != value:
        shown = printable(repr(value))[:60]
        raise UsageError(f"{where}: expected printable text of at most {TEXT_CHARS} characters, found {shown}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{where}: expected true or false, found {printable(repr(value))[:60]}")
    return value


def _list(value: Any, where: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise UsageError(f"{where}: expected a list of at most {limit} items")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{where}: expected an object, found {printable(repr(value))[:60]}")
    return value


def _sample(value: Any, where: str) -> None:
    """A timeline point: [seconds, runs in flight, busy cores or null]."""
    if not isinstance(value, list) or len(value) != 3:
        raise UsageError(f"{where}: expected [seconds, runs in flight, busy cores or null]")
    number(value[0], f"{where}[0]", 0, MAX_SECONDS)
    number(value[1], f"{where}[1]", 0, MAX_RUNS, integer=True)
    if value[2] is not None:
        number(value[2], f"{where}[2]", 0, MAX_CORES)


def _split_part(value: Any, where: str) -> None:
    part = _object(value, where)
    total = number(part.get("total"), f"{where}.total", 1, MAX_SHARDS, integer=True)
    number(part.get("index"), f"{where}.index", 1, total, integer=True)
    _text(part.get("split"), f"{where}.split")


def _qemu(value: Any, where: str) -> None:
    for name, text in _object(value, where).items():
        if name in ("version", "source", "build"):
            _text(text, f"{where}.{name}")


def _command(value: Any, where: str) -> None:
    for i, word in enumerate(_list(value, where, MAX_WORDS)):
        _text(word, f"{where}[{i}]")


def _timeline(value: Any, where: str) -> None:
    for i, sample in enumerate(_list(value, where, MAX_SAMPLES)):
        _sample(sample, f"{where}[{i}]")


_META_CHECKS: dict[str, Callable[[Any, str], object]] = {
    **dict.fromkeys(("tool", "started", "finished", "history_tree", "affected"), _text),
    "complete": _flag, "strict_flaky": _flag,
    "wall_s": lambda v, w: number(v, w, 0, MAX_SECONDS),
    "planned": lambda v, w: number(v, w, 0, MAX_RUNS, integer=True),
    "qemu": _qemu, "command": _command, "timeline": _timeline, "shard": _split_part,
}


def _check_meta(shard: Recorded) -> None:
    """Every top-level field of a shard's results.json that merge or the reports read has its type and bounds
    (a 1e9-shard split, a 1e300 s timeline or `"qemu": "x"` would otherwise be a traceback or a MemoryError)."""
    for name, check in _META_CHECKS.items():
        if name in shard.meta and not (name == "shard" and shard.meta[name] is None):
            check(shard.meta[name], _where(shard, name))


def _check_folders(out: Path, inputs: list[Path]) -> None:
    target = out.resolve()
    seen: dict[Path, Path] = {}
    for folder in inputs:
        real = folder.resolve()
        if real in seen:
            raise UsageError(f"merge: {folder} is named twice (as {seen[real]})")
        seen[real] = folder
        if real == target or real in target.parents or target in real.parents:
            raise UsageError(f"merge: OUT {out} overlaps the input {folder}: name a folder outside every input")


def _split_of(shard: Recorded) -> dict[str, Any] | None:
    part = shard.meta.get("shard")
    if part is None:
        return None
    _split_part(part, _where(shard, "shard"))
    return dict(part)


def missing_shards(shards: list[Recorded]) -> list[str]:
    """Shards of the inputs' split that are not among them ("2/3"); refuses shards of different splits."""
    parts = [(s, p) for s in shards if (p := _split_of(s)) is not None]
    if not parts:
        return []
    first, part = parts[0]
    seen: dict[int, Path] = {}
    for shard, other in parts:
        if (other["total"], other["split"]) != (part["total"], part["split"]):
            raise UsageError(f"merge: {shard.folder} (shard {other['index']}/{other['total']}) and {first.folder} "
                             f"(shard {part['index']}/{part['total']}) computed different splits (different "
                             "selections or duration histories): runs may be missing or doubled")
        if other["index"] in seen:
            raise UsageError(f"merge: shard {other['index']}/{other['total']} is both {seen[other['index']]} "
                             f"and {shard.folder}")
        seen[other["index"]] = shard.folder
    return [f"{i}/{part['total']}" for i in range(1, part["total"] + 1) if i not in seen]


def _common_tree(shards: list[Recorded]) -> str:
    trees = {s.meta.get("history_tree") for s in shards}
    if len(trees) != 1 or not all(isinstance(t, str) for t in trees):
        raise UsageError("merge --history: the inputs do not name one QEMU tree (history_tree differs or is absent: "
                         "shards of different trees, or written by an older iotests-run)")
    return str(trees.pop())


# Copying the shards' artifacts: no link followed at any component, regular files only, bounded -------------

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link, not followed"
    if stat.S_ISFIFO(mode):
        return "a FIFO, not read"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not read"
    return "not a regular file or a folder"


@dataclass
class _Copy:
    """One merge's copying into OUT: what it may still bring in, and what it left out."""

    out: Path
    bytes_left: int = TOTAL_BYTES
    files_left: int = MAX_FILES
    warnings: list[str] = field(default_factory=list)
    left_out: int = 0

    def skip(self, path: Path, why: str) -> None:
        self.left_out += 1
        if len(self.warnings) < SHOWN_WARNINGS:
            self.warnings.append(f"{printable(str(path))}: {why}: left out of {printable(str(self.out))}")

    def tree(self, src: int, dst: int, where: Path, depth: int) -> None:
        """The folder src into dst (both fds), entry by entry, as lstat sees each (no link followed)."""
        with os.scandir(src) as listing:
            entries = sorted((e.name, e.stat(follow_symlinks=False).st_mode) for e in listing)
        for name, mode in entries:
            if stat.S_ISDIR(mode):
                self.folder(src, dst, name, where / name, depth)
            elif stat.S_ISREG(mode):
                self.file(src, dst, name, where / name)
            else:
                self.skip(where / name, _kind(mode))

    def folder(self, src: int, dst: int, name: str, where: Path, depth: int) -> None:
        if depth >= DEPTH:
            self.skip(where, f"deeper than {DEPTH} folders")
            return
        try:
            inner = os.open(name, _DIR, dir_fd=src)  # O_NOFOLLOW: a link put there since the listing is refused
        except OSError as exc:
            self.skip(where, _kind(stat.S_IFLNK) if exc.errno in (errno.ELOOP, errno.ENOTDIR) else str(exc.strerror))
            return
        try:
            try:
                os.mkdir(name, 0o755, dir_fd=dst)
            except FileExistsError:  # the same folder (runs/qcow2-file) in another shard: ours, made just now
                pass
            target = os.open(name, _DIR, dir_fd=dst)
            try:
                self.tree(inner, target, where, depth + 1)
            finally:
                os.close(target)
        finally:
            os.close(inner)

    def file(self, src: int, dst: int, name: str, where: Path) -> None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
        except OSError as exc:
            self.skip(where, _kind(stat.S_IFLNK) if exc.errno == errno.ELOOP else str(exc.strerror))
            return
        try:
            st = os.fstat(fd)
            why = (_kind(st.st_mode) if not stat.S_ISREG(st.st_mode)
                   else f"larger than {FILE_BYTES >> 20} MB" if st.st_size > FILE_BYTES
                   else f"beyond the merge's {TOTAL_BYTES >> 20} MB of artifacts" if st.st_size > self.bytes_left
                   else f"beyond the merge's {MAX_FILES} files" if self.files_left <= 0
                   else short_of_room(self.out, st.st_size))
            if why:
                self.skip(where, why)
                return
            self.bytes_left -= st.st_size
            self.files_left -= 1
            _copy_bytes(fd, dst, name, st)
        finally:
            os.close(fd)


def _copy_bytes(fd: int, dst: int, name: str, st: os.stat_result) -> None:
    """At most the st_size bytes the file had when it was checked (it may grow while copied), its mode kept."""
    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst)
    try:
        left = st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
        os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o755)
    finally:
        os.close(out)


def _copy_runs(copy: _Copy, src: int, dst: int, folder: Path) -> None:
    try:
        mode = os.lstat(RUNS, dir_fd=src).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        copy.skip(folder / RUNS, _kind(mode))
        return
    runs = os.open(RUNS, _DIR, dir_fd=src)
    try:
        copy.tree(runs, dst, folder / RUNS, 1)
    finally:
        os.close(runs)


def copy_artifacts(out: Path, inputs: list[Path], total: int = TOTAL_BYTES) -> _Copy:
    """Each input's runs/ into out/runs/ (at most total bytes); nothing outside an input is reached through a link
    in it."""
    copy = _Copy(out, bytes_left=total)
    os.makedirs(out / RUNS, exist_ok=True)
    dst = os.open(out / RUNS, _DIR)
    try:
        for folder in inputs:
            src = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the folder named: followed
            try:
                _copy_runs(copy, src, dst, folder)
            finally:
                os.close(src)
    finally:
        os.close(dst)
    return copy


def _merged_meta(inputs: list[Path], shards: list[Recorded], command: list[str], missing: list[str]) -> Meta:
    """The merge's results.json fields: the first shard's, the merge's own, and each shard's timeline."""
    meta = Meta.from_dict(shards[0].meta)
    meta.merged_from = [str(f) for f in inputs]
    meta.shard = None
    meta.timeline = []  # each shard's samples are in its entry of "shards"
    meta.command = command  # the merge's; each shard's stays in its entry of "shards"
    meta.shards = [{"folder": str(folder), "shard": s.meta.get("shard"), "started": s.meta.get("started"),
                       "command": s.meta.get("command", []), "wall_s": s.meta.get("wall_s"),
                       "complete": s.meta.get("complete") is True, "timeline": s.meta.get("timeline", [])}
                      for folder, s in zip(inputs, shards, strict=True)]
    meta.missing_shards = missing
    meta.complete = all(s.meta.get("complete") is True for s in shards) and not missing
    meta.strict_flaky = any(s.meta.get("strict_flaky") is True for s in shards)
    meta.planned = int(sum(s.meta.get("planned", 0) for s in shards))
    meta.wall_s = max(float(s.meta.get("wall_s", 0.0)) for s in shards)  # shards run side by side
    return meta


def _check_runs(shards: list[Recorded]) -> None:
    """No run in two inputs, and no more than MAX_RUNS in all."""
    total = sum(len(s.records) for s in shards)
    if total > MAX_RUNS:
        raise UsageError(f"merge: the inputs hold {total} runs, more than {MAX_RUNS}")
    seen: dict[RunId, Path] = {}
    for shard in shards:
        for ident in shard.idents():
            if ident in seen:
                raise UsageError(f"merge: run {ident.combo} {ident.key} is in both {seen[ident]} "
                                 f"and {shard.folder}")
            seen[ident] = shard.folder


def merge_folders(out: Path, inputs: list[Path], command: list[str], history_file: Path | None = None) -> Merged:
    if not inputs:
        raise UsageError("merge needs at least one results folder")
    if len(inputs) > MAX_INPUTS:
        raise UsageError(f"merge: {len(inputs)} results folders, more than {MAX_INPUTS}")
    _check_folders(out, inputs)
    shards = [read_results(folder, "merge") for folder in inputs]
    for shard in shards:
        _check_meta(shard)
    missing = missing_shards(shards)
    tree = None
    if history_file is not None:
        history.check_usable(history_file)
        tree = _common_tree(shards)
    _check_runs(shards)
    meta = _merged_meta(inputs, shards, command, missing)
    held = claim(out, "merge OUT")
    try:
        copied = copy_artifacts(held.path, inputs)
    except OSError as exc:
        raise SetupError(f"cannot write merged results to {out}: {exc}") from None
    results: list[Result] = []
    tests: dict[str, TestCase] = {}
    for index, shard in enumerate(shards, 1):
        source = shard.meta.get("qemu", {}).get("source", ".")
        iotests = Path(source) / "tests" / "qemu-iotests"
        for record in shard.records:
            record["shard"] = index
            results.append(shard.result(record, iotests, held.path, tests))
        shard.records.clear()  # a million runs' dicts need not outlive their Results
    return Merged(results, meta, held, tree, copied.warnings, copied.left_out)
