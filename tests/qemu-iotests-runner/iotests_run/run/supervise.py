"""Run one test process to its end, whatever it does: the only place a test is started and stopped.

The test runs in its own session (and namespaces, and cgroup where allowed)
with stdin /dev/null and its output in a file. While it runs, it is checked
once a second: past the hard timeout it is a timeout; when its whole process
tree used (almost) no CPU and wrote no output for the hang timeout (shorter for
a run whose duration history says it passed quickly) it is a hang. Either way
diagnostics come first, then TERM to every process of the run, a grace period,
and KILL. When the test exits, anything it left running is a leak: described,
then killed.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from iotests_run.debug.diagnostics import Evidence, collect
from iotests_run.model import LiveRun, Stop
from iotests_run.run.deaths import DeathWatch
from iotests_run.run.isolation import Isolation, Overlay, child_setup
from iotests_run.run.registry import Registry
from iotests_run.run.tracking import Tracker, kill_all

TICK_S = 1.0
# A process the test told to stop just before it exited (nbd-qemu-allocation's qemu-nbd gets
# SIGTERM and the test does not wait) is not a leak: leftovers get this long to go by themselves.
LEAK_GRACE_S = 2.0
# Below this average CPU use (fraction of one core) a process tree counts as idle.
IDLE_CPU_RATE = 0.005
# The shortest hang limit a run's duration history can give it (--hang-factor).
HANG_FLOOR_S = 10.0
# Once a process of the run died of a crash signal, the test may stay idle this long before the run ends as a crash.
CRASH_IDLE_S = 5.0


@dataclass(frozen=True)
class SoonerHang:
    """A shorter hang limit, from the run's duration history (--hang-factor). Its clock stands still while
    a thread of the run sleeps uninterruptibly: waiting for a slow disk is not waiting for an event."""

    after_s: float
    basis: str  # for the hang's reason


@dataclass(frozen=True)
class Limits:
    timeout_s: float
    hang_timeout_s: float
    grace_s: float = 3.0
    diagnostics_budget_s: float = 60.0
    sooner_hang: SoonerHang | None = None


@dataclass(frozen=True)
class Launch:
    """What to start, and how: the test's command, folder, environment, output file and isolation."""

    argv: list[str]
    cwd: Path
    env: Mapping[str, str]
    output: Path
    isolation: Isolation
    overlay: Overlay | None = None  # the run's layer over the iotests folder, where its cores land


@dataclass(frozen=True)
class Watch:
    """How to watch it: limits, whose processes are the run's, where it is registered, where evidence goes."""

    limits: Limits
    tracker: Tracker
    registry: Registry
    key: str
    label: str
    diagnostics_dir: Path
    qemu_gdb: Path | None  # the tree's scripts/qemu-gdb.py, for `qemu bt`


@dataclass(frozen=True)
class Ending:
    returncode: int
    stopped: Stop | None = None  # None when the test ended by itself
    detail: str = ""
    evidence: Evidence | None = None
    leaked: tuple[str, ...] = ()
    cpu_s: float | None = None  # CPU time of the run's whole process tree, where a cgroup counted it


def _describe_all(pids: list[int]) -> tuple[str, ...]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out.append(f"{pid} {' '.join(p.cmdline()) or p.name()}")
        except psutil.Error:
            continue
    return tuple(out)


def _leftovers(tracker: Tracker, test_pid: int, grace_s: float) -> list[int]:
    """The run's processes still there once the test exited, after up to grace_s for those on their way out."""
    deadline = time.monotonic() + grace_s
    while True:
        left = [p for p in tracker.members() if p != test_pid]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def _wait_exit(pidfd: int, timeout: float) -> bool:
    ready, _, _ = select.select([pidfd], [], [], timeout)
    return bool(ready)


def _terminate(proc: subprocess.Popen[bytes], tracker: Tracker, grace_s: float) -> None:
    """TERM to every process of the run, up to grace_s for them to go, then KILL."""
    kill_all(tracker, signal.SIGTERM)
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not tracker.members():
            break
        time.sleep(0.05)
    proc.kill()
    kill_all(tracker, signal.SIGKILL)


def _waits_uninterruptibly(pids: list[int]) -> bool:
    """Whether a thread of these processes is in state D (a disk's answer, a FUSE request, a vfork child)."""
    for pid in pids:
        try:
            threads = psutil.Process(pid).threads()
        except psutil.Error:
            continue
        for thread in threads:
            try:
                if psutil.Process(thread.id).status() == psutil.STATUS_DISK_SLEEP:
                    return True
            except psutil.Error:
                continue
    return False


def _watch(pidfd: int, output: Path, tracker: Tracker, limits: Limits,
           registry: Registry, live: LiveRun, deaths: DeathWatch) -> tuple[Stop | None, str]:
    """Wait for the test; return why it must be stopped (or None when it exited). A test that stays idle after
    one of its processes died of a crash signal is stopped as a crash, without waiting for the hang limit."""
    size, mark_cpu, mark_t = -1, tracker.cpu_seconds(), live.started
    waited_on_storage = live.started  # the last tick a thread of the run was in state D, while idle
    while not _wait_exit(pidfd, TICK_S):
        now = time.monotonic()
        if registry.stopping.is_set():
            return Stop.INTERRUPTED, registry.why
        if live.stop.is_set():
            return Stop.INTERRUPTED, "another copy of this run failed (--until-fail)"
        if now - live.started >= limits.timeout_s:
            return Stop.TIMEOUT, f"still running after {limits.timeout_s:g} s (--timeout)"
        try:
            new_size = output.stat().st_size
        except OSError:
            new_size = size
        cpu = tracker.cpu_seconds()
        died = deaths.check(now)
        if new_size != size:
            size, live.last_activity = new_size, now
            mark_cpu, mark_t = cpu, now
        elif cpu - mark_cpu > IDLE_CPU_RATE * (now - mark_t) + 0.02:
            mark_cpu, mark_t = cpu, now
        elif died:  # no hang limit to wait for: the idle test waits for what died
            idle = min(CRASH_IDLE_S, limits.hang_timeout_s)
            if now - max(mark_t, live.last_activity, deaths.since) >= idle:
                return Stop.CRASH, f"{died}; the test then waited {idle:g} s with no CPU and no output"
        elif now - max(mark_t, live.last_activity) >= limits.hang_timeout_s:
            return Stop.HANG, (f"no CPU and no output for {limits.hang_timeout_s:g} s (--hang-timeout); "
                               f"{cpu:.2f} s CPU in all")
        elif (sooner := limits.sooner_hang) is not None:
            if _waits_uninterruptibly(tracker.members()):
                waited_on_storage = now
            if now - max(mark_t, live.last_activity, waited_on_storage) >= sooner.after_s:
                return Stop.HANG, (f"no CPU and no output for {sooner.after_s:g} s ({sooner.basis}); "
                                   f"{cpu:.2f} s CPU in all")
    return None, ""


def supervise(launch: Launch, watch: Watch) -> Ending:
    tracker, limits = watch.tracker, watch.limits
    live = watch.registry.add(watch.key, watch.label)
    try:
        with launch.output.open("wb") as out:
            proc = tracker.start(lambda: subprocess.Popen(
                launch.argv, cwd=launch.cwd, env=dict(launch.env), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, preexec_fn=child_setup(launch.isolation, tracker.cgroup_procs,
                                                                  launch.overlay)), watch.label)
        pidfd = os.pidfd_open(proc.pid)
        try:
            deaths = DeathWatch(launch.overlay.upper if launch.overlay is not None and launch.isolation.cores
                                else None, proc.pid)
            stopped, detail = _watch(pidfd, launch.output, tracker, limits, watch.registry, live, deaths)
        finally:
            os.close(pidfd)
        evidence = None
        if stopped in (Stop.TIMEOUT, Stop.HANG):
            evidence = collect(tracker.members(), watch.diagnostics_dir, watch.qemu_gdb, limits.diagnostics_budget_s)
        if stopped:
            _terminate(proc, tracker, limits.grace_s if stopped is not Stop.INTERRUPTED else 1.0)
        returncode = proc.wait()
        leaked = () if stopped else _describe_all(_leftovers(tracker, proc.pid, LEAK_GRACE_S))
        cpu = tracker.run_cpu_seconds()
        cpu_s = None if cpu is None else round(cpu, 3)
        return Ending(returncode, stopped, detail, evidence, leaked, cpu_s)
    finally:
        tracker.close()
        watch.registry.discard(watch.key)
