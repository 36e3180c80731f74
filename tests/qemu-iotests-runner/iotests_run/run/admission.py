"""The cores this invocation may use, how busy they are, and when one more run may start.

iotests are a mix of CPU-bound runs (qemu-img's key derivation, qemu-io's
pattern writes, fork-heavy bash) and runs that mostly wait (timers, QMP events,
block jobs throttled on purpose). A fixed number of runs at a time either leaves
cores idle while the sleepy ones wait, or crowds the cores when the busy ones
meet, and more runs than keep the cores busy buy nothing: they only stretch
every run's wall time (and timing-sensitive iotests fail more often under load).
So one run more than there are cores always goes (the spare one covers the next
run's start-up and the last one's clean-up), and more start only while cores
actually sit idle. (Whether crowding itself costs CPU could not be shown on the
2-core machine measured: the same qcow2 quick set took 112 to 135 busy
core-seconds between runs minutes apart, at 1, 2, 3 or 4 runs at a time alike.)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from iotests_run.run.tracking import cgroup2_mount, cgroup_usage_seconds

CGROUP_MOUNT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
WINDOW_S = 0.3  # idleness is judged over this long, and at most one run beyond the floor starts per window
IDLE_CORES_TO_START = 0.3  # a window this idle (in cores) lets one more run start


@dataclass(frozen=True)
class Quota:
    """A cgroup CPU quota over this process: how many cores' worth, and where its usage is counted."""

    cores: float
    usage: Path  # cgroup v2 cpu.stat (usage_usec) or v1 cpuacct.usage (nanoseconds)

    def used_seconds(self) -> float:
        if self.usage.name == "cpuacct.usage":
            return int(self.usage.read_text()) / 1e9
        return cgroup_usage_seconds(self.usage)


def _upwards(mount: Path, rel: str) -> list[Path]:
    """The cgroup's folder and its parents up to the mount; inside a container the path of
    /proc/self/cgroup may not exist in the container's view, whose root is then its own cgroup."""
    folder = mount / rel.lstrip("/")
    chain = [folder]
    while folder != mount and mount in folder.parents:
        folder = folder.parent
        chain.append(folder)
    return chain


def _v2_quotas(mount: Path, rel: str) -> list[Quota]:
    found = []
    for folder in _upwards(mount, rel):
        try:
            quota, period = (folder / "cpu.max").read_text().split()
            if quota != "max":
                found.append(Quota(int(quota) / int(period), folder / "cpu.stat"))
        except (OSError, ValueError):
            continue
    return found


def _v1_quotas(cpu: Path, cpuacct: Path, rel: str) -> list[Quota]:
    found = []
    for folder in _upwards(cpu, rel):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            found.append(Quota(quota / period, cpuacct / folder.relative_to(cpu) / "cpuacct.usage"))
    return found


def cgroup_quota(mount: Path, self_cgroup: Path, unified: Path | None) -> Quota | None:
    """The tightest CPU quota over this process, cgroup v2 (cpu.max, under `unified`, the v2 mount)
    or v1 (cpu.cfs_quota_us, a controller folder under `mount`)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    found: list[Quota] = []
    for line in lines:
        hierarchy, controllers, rel = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and controllers == "":
            if unified is not None:
                found += _v2_quotas(unified, rel)
        elif "cpu" in controllers.split(","):
            cpu = next((mount / n for n in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (mount / n).is_dir()), None)
            if cpu is not None:
                cpuacct = mount / "cpuacct" if (mount / "cpuacct").is_dir() else cpu
                found += _v1_quotas(cpu, cpuacct, rel)
    return min(found, key=lambda q: q.cores, default=None)


@dataclass(frozen=True)
class Cpus:
    """The cores this invocation may use, read once at start: CPU affinity lowered to a cgroup
    CPU quota (docker --cpus, CI runners), and the quota itself, whose usage is the busy clock."""

    count: int
    quota: Quota | None

    @staticmethod
    def here() -> Cpus:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        quota = cgroup_quota(CGROUP_MOUNT, SELF_CGROUP, cgroup2_mount())
        return Cpus(max(1, min(cores, math.ceil(quota.cores))) if quota else max(1, cores), quota)

    def busy_clock(self) -> Callable[[], float] | None:
        """A function returning busy core-seconds so far, for the cores `count` counts.

        Under a quota, the quota'd cgroup's own usage (the machine beyond it may be
        idle while we are throttled); otherwise the whole machine's non-idle time
        (iowait counts as idle: a core waiting on the disk could run another test;
        steal counts as busy: the core had work).
        None when neither can be read.
        """
        probe = self.quota.used_seconds if self.quota is not None else _machine_busy
        try:
            probe()
        except (OSError, ValueError):
            return None
        return probe


def _machine_busy() -> float:
    t = psutil.cpu_times()
    # guest time is already in user time on Linux
    counted = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return float(counted - t.idle - getattr(t, "iowait", 0.0))


class Admission:
    """Decides, each time the pool asks, whether one more run may start now.

    Below `floor` runs (cores + 1) a run always starts; at `jobs` none does; in
    between, one starts per window in which the cores were at least
    IDLE_CORES_TO_START idle. Without a busy clock, or with fixed=True, it is a
    plain limit of `jobs` runs at a time.
    """

    def __init__(self, jobs: int, cores: int, busy: Callable[[], float] | None, *, fixed: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs = jobs
        self.cores = cores
        self.busy = None if fixed else busy
        self.floor = jobs if self.busy is None else min(jobs, cores + 1)
        self.clock = clock
        self.mark: tuple[float, float] | None = None  # (time, busy core-seconds) where the window began
        self.extra_started = 0

    def may_start(self, running: int) -> bool:
        if running < self.floor:
            return True
        if running >= self.jobs or self.busy is None:
            return False
        now = self.clock()
        if self.mark is not None and now - self.mark[0] < WINDOW_S:
            return False  # the pool asks every 0.1 s: the busy clock is read once per window, not each time
        try:
            busy = self.busy()
        except (OSError, ValueError):  # the accounting went away (a cgroup removed): stay at the floor
            self.busy = None
            return False
        if self.mark is None:
            self.mark = (now, busy)
            return False
        idle = self.cores - (busy - self.mark[1]) / (now - self.mark[0])
        self.mark = (now, busy)
        if idle >= IDLE_CORES_TO_START:
            self.extra_started += 1
            return True
        return False

    def describe(self) -> str:
        if self.busy is None or self.floor == self.jobs:
            return f"{self.jobs} in parallel"
        return f"{self.floor} to {self.jobs} in parallel (more than {self.floor} only while cores idle)"
