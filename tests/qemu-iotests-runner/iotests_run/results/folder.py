"""The results folder: what iotests-run owns there, how it claims and locks it, how it reads it back.

A folder is iotests-run's when it holds the MARKER file, written the first time a run or a
merge uses it. Nothing in a folder is removed or replaced unless the folder is ours, new or
empty; a results folder from before the marker existed (only our files, a results.json we
wrote) is taken over. The marker is also the lock: an invocation holds an exclusive flock on
it from its claim to its exit, so a second one on the same folder stops at once, naming it.

Layout (a contract for CI and tools): junit.xml, results.json, summary.txt, report.html, and
runs/FORMAT-PROTOCOL/TEST/ with the artifacts of every run that did not pass cleanly.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from iotests_run.errors import SetupError, UsageError
from iotests_run.files import remove_tree
from iotests_run.inputs import open_beneath, parse_json, read_beneath, read_bytes
from iotests_run.model import Outcome, Result, Run, RunId, TestCase
from iotests_run.outputs import DIFF_BYTES, report_excerpt
from iotests_run.text import printable
from iotests_run.tree.discovery import TEST_NAME

MARKER = ".iotests-run"
# Room held back in the folder from the claim to the end (released when the disk is full, so that
# results.json and junit.xml can still take every run that finished, and at the end for the last writes).
RESERVE, RESERVE_BYTES = ".iotests-run.reserve", 8 << 20
JUNIT, RESULTS_JSON, SUMMARY, REPORT = "junit.xml", "results.json", "summary.txt", "report.html"
RESULT_FILES = (JUNIT, RESULTS_JSON, SUMMARY, REPORT)
RUNS = "runs"
# Files of a run's artifacts folder.
DIFF, LEAKED, REPRODUCER = "diff.txt", "leaked.txt", "reproduce.sh"
SANITIZER = "sanitizer"  # a sanitizer build's reports: sanitizer/PROGRAM.PID.txt
VALGRIND = "valgrind"  # --valgrind's reports of a run that failed: valgrind/PROGRAM.PID.txt
SCHEMA = 3  # results.json's "schema": 2 added it and each run's "quarantined", "casenotrun", "copy", "recent";
# 3 added "history_tree", "shard" (a shard's part of the split) and "shards" (a merge's inputs), each run's "shard"
# How much of a recorded diff.txt merge reads back: all of one capped as outputs.DIFF_BYTES (its headers
# included) with its truncation line.
DIFF_READ_BYTES = DIFF_BYTES + 16 * 1024
# Bounds on what a results.json read back (a shard, the last run) may hold: a run is about 400 bytes of it,
# no run lasts (or starts) beyond MAX_SECONDS, and a --repeat copy number or a merge's input number is bounded.
RESULTS_JSON_BYTES = 1 << 30
MAX_RUNS = 2_000_000
MAX_SECONDS = 1e6
MAX_CPU_SECONDS = 1e9
MAX_COPY = 1_000_000
MAX_INPUTS = 10_000


def run_folder(run: Run | RunId) -> str:
    """The run's artifacts folder, relative to the results folder."""
    ident = run.id if isinstance(run, Run) else run
    return f"{RUNS}/{ident.combo}/{ident.name}" + (f"-copy-{ident.copy}" if ident.copy else "")


# Claiming ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """An exclusive hold on a results folder (the flock on fd), released when the invocation exits."""

    path: Path
    fd: int

    def reserve(self) -> None:
        """Hold back RESERVE_BYTES (at most an eighth of the free space) for the last writes; nothing when the
        filesystem cannot allocate it."""
        try:
            size = min(RESERVE_BYTES, _free(self.path) // 8)
            fd = os.open(self.path / RESERVE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except OSError:
            return
        try:
            if size > 0:
                os.posix_fallocate(fd, 0, size)
        except OSError:
            (self.path / RESERVE).unlink(missing_ok=True)
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Give the held-back room to the files; whether there was any."""
        try:
            size = os.lstat(self.path / RESERVE).st_size
            os.unlink(self.path / RESERVE)
        except OSError:
            return False
        return size > 0


def _is_previous_results(folder: Path, entries: list[str]) -> bool:
    """A folder written by an iotests-run from before the marker: only our names, our results.json."""
    ours = {*RESULT_FILES, RUNS}
    if not all(e in ours or any(e.startswith(f".{f}.") for f in RESULT_FILES) for e in entries):
        return False
    try:  # a FIFO or a device there must not block or fill memory
        data = json.loads(read_bytes(folder / RESULTS_JSON, "", RESULTS_JSON_BYTES, follow_links=False))
        return str(data.get("tool", "")).startswith("iotests-run ")
    except (UsageError, ValueError, AttributeError, RecursionError):
        return False


def _holder(marker: Path) -> str:
    try:
        for line in marker.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("pid "):
                return f" (pid {line[4:].strip()})"
    except OSError:
        pass
    return ""


def claim(folder: Path, what: str) -> Claim:
    """Make the folder ours and lock it, then remove the previous run's results from it.

    Refused (UsageError, nothing touched): a path that is not a folder, a non-empty folder
    that is not ours, a folder another invocation holds.
    """
    folder = folder.resolve()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} is not a folder: {folder}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        entries = os.listdir(folder)
    except OSError as exc:
        raise UsageError(f"{what} is not writable: {folder} ({exc.strerror or exc})") from None
    marker = folder / MARKER
    if MARKER not in entries and entries and not _is_previous_results(folder, entries):
        raise UsageError(f"{what} {folder} is not empty and not an iotests-run results folder (no {MARKER} "
                         "in it): nothing in it was touched; name a new or empty folder")
    try:
        fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UsageError(f"{what} is not usable: {marker} ({exc.strerror or exc})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UsageError(f"{what} {folder} is in use by another iotests-run{_holder(marker)}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"iotests-run's results folder: its next run here replaces what is in it.\npid {os.getpid()}\n"
             .encode())
    remove_tree(folder / RUNS)
    for name in (*RESULT_FILES, RESERVE):
        (folder / name).unlink(missing_ok=True)
    return Claim(folder, fd)


def _free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def short_of_room(folder: Path, need: int) -> str | None:
    """Why need more bytes of a run's artifacts may not be kept in the folder (None: they may): the filesystem's
    last RESERVE_BYTES (an eighth of a small one) are left to the result files, which then still take every run
    that finished."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    free, margin = st.f_bavail * st.f_frsize, min(RESERVE_BYTES, st.f_blocks * st.f_frsize // 8)
    if free - need > margin:
        return None
    return f"the results folder's filesystem has {free >> 10} KB free, left to the result files"


def check_outside(path: Path, folder: Path, what: str) -> None:
    """Refuse a path that lies in (or is) a results folder, which every run empties."""
    real, results = path.resolve(), folder.resolve()
    if real == results or results in real.parents:
        raise UsageError(f"{what} {path} is inside the results folder {folder}, which each run empties")


def check_junit_copy(path: Path) -> Path:
    """--junit FILE: a new file, or one holding JUnit XML already; never a folder or another file."""
    path = path.resolve()
    if path.is_dir():
        raise UsageError(f"--junit {path} is a folder; name a file")
    if path.exists():
        try:
            with path.open("rb") as f:
                head = f.read(512) if path.is_file() else b""
        except OSError as exc:
            raise UsageError(f"--junit {path} cannot be replaced ({exc.strerror or exc})") from None
        if head.strip() and b"<testsuite" not in head:
            raise UsageError(f"--junit {path} exists and is not a JUnit XML file; it is left as it is")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"folder of --junit is not writable: {path.parent} ({exc.strerror or exc})") from None
    return path


# Records: written by each run, read back by merge and --last-failed --------------------------------

def run_record(result: Result) -> dict[str, Any]:
    return {
        "test": result.run.test.name,
        "format": result.run.format,
        "protocol": result.run.protocol,
        "outcome": result.outcome.value,
        "reason": result.reason,
        "duration_s": result.duration_s,
        "cpu_s": result.cpu_s,
        "artifacts": result.artifacts,
        "leaked": list(result.leaked),
        "key": result.run.test.key,
        "diagnostics": result.diagnostics,
        "attachments": list(result.attachments),
        "quarantined": result.quarantined,
        "casenotrun": result.casenotrun,
        "copy": result.run.copy,
        "recent": result.recent,
        "started_s": result.started_s,
        "shard": result.shard,
        "explanation": result.explanation,
    }


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _word(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and all(c.isalnum() or c in "_.+-" for c in value)


def _bounded(value: Any, high: float, integer: bool = False) -> bool:
    """A JSON number from 0 to high (an int where asked): 1e300 seconds would pass a finiteness check and then
    size a timeline."""
    kind = int if integer else (int, float)
    return isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= high


def _seconds(value: Any) -> bool:
    return _bounded(value, MAX_SECONDS)


def _inside(value: Any) -> bool:
    """A path relative to the results folder that stays in its runs/ folder."""
    if not isinstance(value, str) or not value.startswith(f"{RUNS}/") or "\\" in value:
        return False
    parts = PurePosixPath(value).parts
    return ".." not in parts and all(p.isprintable() for p in parts)


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _paths(value: Any) -> bool:
    return isinstance(value, list) and all(_inside(v) for v in value)


_OUTCOMES = tuple(o.value for o in Outcome)

# field: (required, accepts, what it must be)
_FIELDS: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "test": (True, lambda v: isinstance(v, str) and bool(TEST_NAME.fullmatch(v)), "a test name"),
    "format": (True, _word, "a format name"),
    "protocol": (True, _word, "a protocol name"),
    "outcome": (True, lambda v: v in _OUTCOMES, f"one of {', '.join(_OUTCOMES)}"),
    "key": (False, lambda v: isinstance(v, str) and bool(TEST_NAME.fullmatch(v.removeprefix("tests/"))),
            "a test key"),
    "reason": (False, _text, "text"),
    "diagnostics": (False, _text, "text"),
    "explanation": (False, _text, "text"),
    "duration_s": (False, _seconds, f"seconds (a number from 0 to {MAX_SECONDS:g})"),
    "cpu_s": (False, lambda v: v is None or _bounded(v, MAX_CPU_SECONDS), f"null or 0 to {MAX_CPU_SECONDS:g} seconds"),
    "artifacts": (False, lambda v: v is None or _inside(v), "null or a folder under runs/"),
    "attachments": (False, _paths, "a list of files under runs/"),
    "leaked": (False, _texts, "a list of text"),
    "quarantined": (False, lambda v: isinstance(v, bool), "true or false"),
    "casenotrun": (False, _text, "text"),
    "recent": (False, _text, "text"),
    "started_s": (False, lambda v: v is None or _seconds(v), f"null or 0 to {MAX_SECONDS:g} seconds"),
    "copy": (False, lambda v: _bounded(v, MAX_COPY, integer=True), f"a copy number (0 to {MAX_COPY})"),
    "shard": (False, lambda v: _bounded(v, MAX_INPUTS, integer=True), f"an input number (0 to {MAX_INPUTS})"),
}


def _checked(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise UsageError(f"{where}: expected an object")
    for name, (required, accepts, wanted) in _FIELDS.items():
        if name not in record:
            if required:
                raise UsageError(f"{where}: no {name!r}")
        elif not accepts(record[name]):
            raise UsageError(f"{where}.{name}: expected {wanted}, found {printable(json.dumps(record[name]))[:80]}")
    return record


def read_beneath_optional(root: Path, rel: str, limit: int) -> str | None:
    """The first limit bytes of root/rel as text, reached with no link followed at any component (a merged
    folder's diff.txt must not be a way out of it); None when it is absent or not a regular file."""
    try:
        fd = open_beneath(root, rel, "")
    except UsageError:
        return None
    try:
        return os.read(fd, limit).decode("utf-8", errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Recorded:
    folder: Path
    meta: dict[str, Any]
    records: list[dict[str, Any]]  # each checked against _FIELDS

    def idents(self) -> list[RunId]:
        """The identity of each recorded run."""
        return [RunId(r.get("key") or r["test"], r["format"], r["protocol"], r.get("copy", 0)) for r in self.records]

    def result(self, record: dict[str, Any], iotests: Path, artifacts_in: Path,
               tests: dict[str, TestCase] | None = None) -> Result:
        """The Result a record describes; its diff read back from the artifacts under artifacts_in. `tests`
        shares one TestCase between the runs of a test (a million runs of a merge, not a million paths)."""
        key, fmt, proto = record.get("key") or record["test"], record["format"], record["protocol"]
        folder = record.get("artifacts")
        diff = read_beneath_optional(artifacts_in, f"{folder}/{DIFF}", DIFF_READ_BYTES) if folder else None
        test = tests.get(key) if tests is not None else None
        if test is None:
            test = TestCase(key=key, path=iotests / key, groups=frozenset())
            if tests is not None:
                tests[key] = test
        return Result(Run(test, fmt, proto, record.get("copy", 0)),
                      Outcome(record["outcome"]), record.get("reason", ""), float(record.get("duration_s", 0)),
                      diff=report_excerpt((diff or "").rstrip("\n")), artifacts=folder,
                      diagnostics=record.get("diagnostics", ""), attachments=tuple(record.get("attachments", ())),
                      leaked=tuple(record.get("leaked", ())), cpu_s=record.get("cpu_s"),
                      quarantined=record.get("quarantined", False), casenotrun=record.get("casenotrun", ""),
                      recent=record.get("recent", ""), started_s=record.get("started_s"),
                      shard=record.get("shard", 0), explanation=record.get("explanation", ""))


def read_results(folder: Path, what: str) -> Recorded:
    """A results folder's results.json (a regular file, no link followed, at most RESULTS_JSON_BYTES), every
    run record checked; anything else is one UsageError line."""
    path = folder / RESULTS_JSON
    if not os.path.lexists(path):
        raise UsageError(f"{what}: no results.json in {folder}")
    data = parse_json(read_beneath(folder, RESULTS_JSON, what, RESULTS_JSON_BYTES), what, path)
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise UsageError(f"{what}: {path} is not a results.json (no runs list)")
    if len(data["runs"]) > MAX_RUNS:
        raise UsageError(f"{what}: {path}: runs: {len(data['runs'])} runs, more than {MAX_RUNS}")
    records = [_checked(r, f"{what}: {path}: runs[{i}]") for i, r in enumerate(data["runs"])]
    return Recorded(folder, {k: v for k, v in data.items() if k != "runs"}, records)
