"""Recording a coverage map (`--coverage-map FILE` on a gcov build): each run's processes get their own
GCOV_PREFIX in the run's sandbox and a preloaded helper (gcov_shim.c: an instrumented QEMU killed with
SIGKILL writes its counters first); `Recorder` reads each run's counters (gcov.py) as the run ends,
builds the function table from every .gcno, and saves the map (`save_recording`: a warning, never a
traceback, when it cannot be written)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

from iotests_run import inputs
from iotests_run.affected.coverage_map import (
    GCOV_FOLDER,
    MAX_SOURCE,
    CoverageMap,
    Span,
    load,
    save,
    source_digest,
)
from iotests_run.affected.gcov import GcovError, Notes, read_counts, read_notes
from iotests_run.errors import UsageError
from iotests_run.model import Result
from iotests_run.text import printable


def gcov_environment(sandbox_root: Path) -> dict[str, str]:
    """What a run's processes get so that their counters land in the run's own folder."""
    return {"GCOV_PREFIX": str(sandbox_root / GCOV_FOLDER), "GCOV_PREFIX_STRIP": "0"}


def dump_addresses(build: Path) -> dict[Path, int]:
    """Where each of the build's instrumented programs has the function that writes gcov's counters (its
    symbol table, read with nm: programs do not export it)."""
    found = {}
    candidates = [p for p in build.iterdir() if p.name.startswith("qemu-")] + \
        [build / "storage-daemon" / "qemu-storage-daemon"]
    for program in candidates:
        if not (program.is_file() and os.access(program, os.X_OK)):
            continue
        try:
            proc = subprocess.run(["nm", str(program)], capture_output=True, text=True, timeout=120,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        symbols = {parts[2]: int(parts[0], 16) for parts in map(str.split, proc.stdout.splitlines())
                   if len(parts) == 3 and parts[1] in ("T", "t")}
        # __gcov_dump is linked in where something calls it (QEMU does); __gcov_exit, what gcov runs at exit,
        # always is: either writes every counter once
        address = symbols.get("__gcov_dump") or symbols.get("__gcov_exit")
        if address:
            found[program.resolve()] = address
    return found


def build_shim(folder: Path) -> Path:
    """gcov_shim.c (counters written before a SIGKILL), compiled for this machine."""
    source = folder / "gcov_shim.c"
    source.write_bytes(resources.files("iotests_run.affected").joinpath("gcov_shim.c").read_bytes())
    shim = folder / "gcov_shim.so"
    proc = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl", "-lpthread"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise UsageError(f"--coverage-map: cannot compile its helper with gcc: {proc.stderr.strip()[-200:]}")
    return shim


def _counters(folder: Path) -> Iterator[Path]:
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if name.endswith(".gcda"):
                yield Path(root) / name


@dataclass
class Recorder:
    """Collects each run's executed functions; one per invocation, shared by the pool's threads."""

    source: Path
    build: Path
    executed: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    uncounted: set[tuple[str, str]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    _notes: dict[Path, Notes | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _folder: Path | None = None
    _shim: Path | None = None
    _dumps: str = ""
    saved_bytes: int = 0  # the size of the map file last written

    @classmethod
    def start(cls, target: Path, source: Path, build: Path, scratch: Path) -> Recorder:
        """--coverage-map FILE: the map file checked (ours or absent), the build checked (gcov), the helper
        built in a folder of its own under scratch; `finish` saves the map after the runs."""
        check_target(target)
        recorder = cls(source, build)
        recorder.check_build()
        recorder.prepare(Path(tempfile.mkdtemp(prefix="iotr-gcov-", dir=scratch)))
        return recorder

    def finish(self, target: Path, tree: str, results: Iterable[Result], note: Callable[[str], None]) -> None:
        save_recording(target, self, tree, results, note)

    def check_build(self) -> None:
        if not any(self.build.rglob("*.gcno")):
            raise UsageError(f"--coverage-map needs a gcov build (no .gcno files in {self.build}; "
                             "tools/build-reference-qemu --coverage makes one)")

    def prepare(self, folder: Path) -> None:
        """The preloaded helper that has a QEMU write its counters before a test SIGKILLs it."""
        self._folder = folder
        self._shim = build_shim(folder)
        self._dumps = ";".join(f"{path}={address:x}" for path, address in dump_addresses(self.build).items())

    def environment(self, sandbox_root: Path, inherited: str | None) -> dict[str, str]:
        """A run's variables: its own counters folder, and the helper preloaded (before the user's own)."""
        env = gcov_environment(sandbox_root)
        if self._shim is not None:
            env["LD_PRELOAD"] = f"{self._shim}:{inherited}" if inherited else str(self._shim)
            env["IOTESTS_RUN_GCOV_DUMP"] = self._dumps
        return env

    @cached_property
    def _roots(self) -> list[Path]:
        """Where the build's sources are: the tree's, and the folder the build was configured from
        (config-host.mak's SRC_PATH), when they differ (a CI job whose gcov build came from another
        checkout of the same sources)."""
        roots = [self.source]
        try:
            for line in (self.build / "config-host.mak").read_text(errors="replace").splitlines():
                if line.startswith("SRC_PATH="):
                    compiled = Path(os.path.normpath(line.split("=", 1)[1].strip()))
                    if compiled.is_absolute() and compiled not in roots:
                        roots.append(compiled)
        except OSError:
            pass
        return roots

    def _source_name(self, notes: Notes, source: str) -> str | None:
        full = Path(os.path.normpath(os.path.join(notes.cwd, source)))
        for root in self._roots:
            try:
                return str(full.relative_to(root))
            except ValueError:
                continue
        return None  # system headers, code generated into the build folder

    def _notes_at(self, gcno: Path) -> Notes | None:
        """A .gcno, read once per invocation (by the runs' threads and by the map's table alike)."""
        with self._lock:
            if gcno not in self._notes:
                try:
                    self._notes[gcno] = read_notes(gcno) if gcno.is_file() else None
                except (OSError, GcovError) as exc:
                    self.problems.append(str(exc))
                    self._notes[gcno] = None
            return self._notes[gcno]

    def _notes_of(self, counts: Path, prefix: Path) -> Notes | None:
        return self._notes_at(Path("/") / counts.relative_to(prefix).with_suffix(".gcno"))

    def collect(self, key: str, sandbox_root: Path) -> None:
        """Add what the run's processes executed (its counters' folder) to the run's set."""
        prefix = sandbox_root / GCOV_FOLDER
        ran: set[tuple[str, str]] = set()
        unknown: set[tuple[str, str]] = set()
        for counts in _counters(prefix):
            notes = self._notes_of(counts, prefix)
            if notes is None:
                continue
            try:
                seen = read_counts(counts)
            except (OSError, GcovError) as exc:
                with self._lock:
                    self.problems.append(str(exc))
                continue
            for function in notes.functions:
                name = self._source_name(notes, function.source)
                if name is None or function.ident not in seen:
                    continue
                state = seen[function.ident]
                if state:
                    ran.add((name, function.name))
                elif state is None:
                    unknown.add((name, function.name))
        with self._lock:
            self.executed.setdefault(key, set()).update(ran)
            self.uncounted.update(unknown)

    def table(self) -> tuple[dict[str, list[Span]], dict[str, str]]:
        """Every function the build compiled from the tree's sources, with the files' digests."""
        spans: dict[str, dict[str, Span]] = {}
        for gcno in sorted(self.build.rglob("*.gcno")):
            notes = self._notes_at(gcno.resolve())
            if notes is None:
                continue
            for function in notes.functions:
                name = self._source_name(notes, function.source)
                if name is None or function.artificial:
                    continue
                known = spans.setdefault(name, {}).get(function.name)
                span = Span(function.name, function.start, function.end)
                if known is not None:  # the same inline function from several objects: the widest range
                    span = Span(function.name, min(known.start, span.start), max(known.end, span.end))
                spans[name][function.name] = span
        digests = {}
        for name in list(spans):
            try:
                digests[name] = source_digest(inputs.read_in_tree(self.source, name, "source file", MAX_SOURCE))
            except UsageError:  # not a regular file of the tree (gone, a FIFO): not mapped
                del spans[name]
        return {n: sorted(s.values(), key=lambda x: x.start) for n, s in spans.items()}, digests

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def forget(self, keys: Iterable[str]) -> None:
        """Runs whose processes did not all exit (killed, crashed, cut short) wrote only part of their
        counters: they stay out of the map, so that a change always runs them."""
        for key in keys:
            self.executed.pop(key, None)

    def save(self, path: Path, tree: str) -> CoverageMap:
        """Write the map (runs recorded earlier for the same tree kept unless run again)."""
        files, digests = self.table()
        cmap = CoverageMap(tree, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), files, digests, {})
        index = {(p, s.name): i for i, (p, s) in enumerate(cmap.table())}
        earlier = _earlier(path, tree, digests)
        if earlier is not None:
            old = earlier.table()
            for key, functions in earlier.runs.items():
                cmap.runs[key] = frozenset(index[(old[i][0], old[i][1].name)] for i in functions
                                           if (old[i][0], old[i][1].name) in index)
        for key, ran in self.executed.items():
            cmap.runs[key] = frozenset(index[f] for f in ran if f in index)
        cmap.uncounted = frozenset(index[f] for f in self.uncounted if f in index)
        self.saved_bytes = save(path, cmap)
        return cmap


def check_target(path: Path) -> None:
    """--coverage-map FILE to record into: a new file, or a map (never another file)."""
    if path.is_dir():
        raise UsageError(f"--coverage-map {path} is a folder; name a file")
    if path.exists():
        load(path)
    if not path.parent.is_dir():
        raise UsageError(f"--coverage-map {path}: no folder {path.parent}")


def _earlier(path: Path, tree: str, digests: Mapping[str, str]) -> CoverageMap | None:
    """The runs of an existing map of the same tree and sources, to keep beside the new ones."""
    if not path.exists():
        return None
    earlier = load(path)  # a file that is not a map is refused, never overwritten
    return earlier if earlier.tree == tree and earlier.digests == dict(digests) else None


def save_recording(path: Path, recorder: Recorder, tree: str, results: Iterable[Result],
                   note: Callable[[str], None]) -> None:
    """--coverage-map FILE after the runs: the map written, or one warning line when it cannot be (a full
    disk, the file turned into something else meanwhile); the runs' results and reports are written
    either way, so a failed save is never a traceback."""
    recorder.forget(r.run.id.history_key for r in results if not r.outcome.counters_whole or r.leaked)
    try:
        cmap = recorder.save(path, tree)
    except OSError as exc:
        note(f"iotests-run: warning: the coverage map {printable(str(path))} was not saved "
             f"({printable(exc.strerror or str(exc))})")
        return
    except UsageError as exc:
        note(f"iotests-run: warning: the coverage map {printable(str(path))} was not saved ({printable(str(exc))})")
        return
    finally:
        recorder.close()
    functions = sum(len(spans) for spans in cmap.files.values())
    note(f"iotests-run: coverage map {path}: {len(cmap.runs)} runs, {functions} functions in "
         f"{len(cmap.files)} source files, {recorder.saved_bytes // 1024} KB"
         + (f"; {len(recorder.problems)} unreadable counter files (first: "
            f"{printable(recorder.problems[0])[:200]})" if recorder.problems else ""))
    if not functions:
        note(f"iotests-run: warning: the coverage map holds no function: none of the build's "
             f".gcno files names a source under {recorder.source}")
