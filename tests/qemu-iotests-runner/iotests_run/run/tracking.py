"""Which processes belong to a run, how much CPU they used, and ending all of them.

Daemons started by tests (`qemu-nbd --fork`, `--daemonize`) call setsid(), so a
process-group kill misses them. Two trackers find them anyway:
- a cgroup v2 per run (when the machine has a writable one): exact membership,
  CPU of the whole tree including processes already gone, atomic kill;
- otherwise a marker variable in the run's environment (IOTESTS_RUN_SANDBOX),
  inherited by every descendant and found by reading /proc/PID/environ.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from iotests_run.run.adoption import Adopter
from iotests_run.run.isolation import cgroup_works

MARKER = "IOTESTS_RUN_SANDBOX"


class Tracker(Protocol):
    cgroup_procs: Path | None

    def start(self, spawn: Callable[[], subprocess.Popen[bytes]], label: str) -> subprocess.Popen[bytes]:
        """Start the run's test process (spawn does), telling whoever must know its pid before anyone looks."""

    def members(self) -> list[int]: ...

    def cpu_seconds(self) -> float: ...

    def run_cpu_seconds(self) -> float | None:
        """CPU of the run's whole process tree, processes already gone included; None when not countable."""

    def close(self) -> None: ...


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_all(tracker: Tracker, sig: signal.Signals = signal.SIGKILL, settle_s: float = 5.0) -> None:
    """Signal every member; with SIGKILL, repeat until none is left (new ones may have forked)."""
    deadline = time.monotonic() + settle_s
    while True:
        pids = [p for p in tracker.members() if p != os.getpid()]
        if not pids:
            return
        signal_all(pids, sig)
        if sig != signal.SIGKILL or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class CgroupRoot:
    """This invocation's cgroup v2 folder; one child cgroup per run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def create() -> CgroupRoot | None:
        mount = cgroup2_mount()
        if mount is None:
            return None
        try:
            own = Path("/proc/self/cgroup").read_text().splitlines()
            rel = next(line[3:] for line in own if line.startswith("0::"))
            path = mount / rel.lstrip("/") / f"iotests-run-{os.getpid()}"
            path.mkdir()
        except (OSError, StopIteration):
            return None
        root = CgroupRoot(path)
        probe = root.run_cgroup("probe")
        works = probe.cgroup_procs is not None and cgroup_works(probe.cgroup_procs)
        probe.close()
        if not works:
            root.close()
            return None
        return root

    def run_cgroup(self, name: str) -> CgroupTracker:
        path = self.path / name
        path.mkdir(exist_ok=True)
        return CgroupTracker(path)

    def close(self) -> None:
        for child in self.path.iterdir() if self.path.is_dir() else ():
            if child.is_dir():
                CgroupTracker(child).close()
        try:
            self.path.rmdir()
        except OSError:
            pass


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid systems)."""
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return Path(left.split()[4])
    except OSError:
        pass
    return None


def cgroup_usage_seconds(cpu_stat: Path) -> float:
    """CPU seconds a cgroup v2 has used (cpu.stat's usage_usec); OSError/ValueError when unreadable."""
    for line in cpu_stat.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise ValueError(f"no usage_usec in {cpu_stat}")


class CgroupTracker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.cgroup_procs: Path | None = path / "cgroup.procs"

    def start(self, spawn: Callable[[], subprocess.Popen[bytes]], label: str) -> subprocess.Popen[bytes]:
        return spawn()

    def members(self) -> list[int]:
        try:
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []
        return [p for p in pids if not _is_zombie(p)]

    def cpu_seconds(self) -> float:
        try:
            return cgroup_usage_seconds(self.path / "cpu.stat")
        except (OSError, ValueError):
            return 0.0

    def run_cpu_seconds(self) -> float | None:
        return self.cpu_seconds()  # the cgroup keeps counting what its exited processes used

    def close(self) -> None:
        kill = self.path / "cgroup.kill"
        if kill.exists():
            try:
                kill.write_text("1")
            except OSError:
                pass
        kill_all(self)
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def marked_processes(value: bytes, prefix: bool = False) -> list[int]:
    """Processes whose environment holds exactly this IOTESTS_RUN_SANDBOX=... entry (or one starting with it)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                variables = f.read().split(b"\0")
        except OSError:
            continue
        if any(v.startswith(value) for v in variables) if prefix else value in variables:
            found.append(int(entry.name))
    return found


class MarkerTracker:
    """Fallback: the processes whose environment carries this run's marker, and (with an Adopter) the
    orphans without it that came back to the runner and can only be this run's."""

    cgroup_procs: Path | None = None

    def __init__(self, marker: str, adopter: Adopter | None = None, key: str = "") -> None:
        self.marker = f"{MARKER}={marker}".encode()
        self.adopter = adopter
        self.key = key

    def start(self, spawn: Callable[[], subprocess.Popen[bytes]], label: str) -> subprocess.Popen[bytes]:
        if self.adopter is None:
            return spawn()
        with self.adopter.lock:
            proc = spawn()
            self.adopter.started(self.key, label, proc.pid)
        return proc

    def members(self) -> list[int]:
        found = [p for p in marked_processes(self.marker) if not _is_zombie(p)]
        if self.adopter is not None:
            found += [p for p in self.adopter.members(self.key) if p not in found]
        return found

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.members():
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                continue
        return total

    def run_cpu_seconds(self) -> float | None:
        return None  # only living processes carry the marker: what the exited ones used is gone

    def close(self) -> None:
        kill_all(self)
        if self.adopter is not None:
            self.adopter.ended(self.key)


@dataclass(frozen=True)
class Trackers:
    """How this invocation finds each run's processes: a cgroup per run, or the marker (and adopted orphans)."""

    cgroups: CgroupRoot | None = None
    marker: str = "iotests-run"  # prefix of each run's IOTESTS_RUN_SANDBOX value
    adopter: Adopter | None = None  # without cgroups: the runner as subreaper of the runs' orphans

    def for_run(self, slot: str) -> Tracker:
        if self.cgroups is not None:
            return self.cgroups.run_cgroup(f"run-{slot}")
        return MarkerTracker(f"{self.marker}/{slot}", self.adopter, slot)

    def marker_of(self, slot: str) -> str:
        """The run's IOTESTS_RUN_SANDBOX value (set in cgroup mode too: the watchdog looks for it)."""
        return f"{self.marker}/{slot}"
