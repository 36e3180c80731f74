"""Orphans of runs without cgroups: daemons that dropped the marker still come back to the runner.

Without cgroups a run's processes are found by the marker variable in their environment; a
daemon started with `setsid env -i ...` carries none. With PR_SET_CHILD_SUBREAPER on the
runner, a process whose parent dies is re-parented to the runner instead of init, so such a
daemon turns up among the runner's children. Adopted processes are told apart from the
runner's own children by their session: every test runs in a session of its own and its pid
is registered (under `lock`) before anyone looks, and the runner's helpers (gdb, cp,
fusermount) stay in the runner's session.

An adopted process belongs to the run whose test's session it is in, else to the one run
that was live when it was created. One that several live runs could have made stays
unclaimed; `close` kills and names those at the end of the invocation. Adopted processes
that exit are reaped within REAP_EVERY_S, as init would reap them: a test that waits for
its daemon to go (`while kill -0 $pid`) sees it go.

What remains (README): after a SIGKILL of the runner itself, adopted processes without the
marker go to init, where the watchdog cannot find them.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
REAP_EVERY_S = 0.2
_TICKS = os.sysconf("SC_CLK_TCK")
# /proc/PID/stat counts a process's start in clock ticks, rounded down: a process made just
# after a run started can look a tick older than the run.
SPAN_SLACK_S = 2 / _TICKS


def _now() -> float:
    """Seconds since boot, the clock /proc/PID/stat's start time counts in."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    session: int
    started: float  # seconds since boot


def _stat(pid: int) -> Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    try:
        return Proc(pid, fields[0], int(fields[3]), int(fields[19]) / _TICKS)
    except (IndexError, ValueError):
        return None


def _children() -> list[int]:
    """The runner's children, every thread's (an orphan goes to one of the subreaper's threads)."""
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


def _describe(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        argv = ""
    return f"{pid} {argv or '?'}"


@dataclass
class _Span:
    label: str
    test_pid: int
    start: float
    end: float | None = None


class Adopter:
    """The runner as the subreaper of its runs' orphans, in marker mode."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while a test starts: its pid is registered before any scan
        self._spans: dict[str, _Span] = {}
        self._own: set[int] = set()  # children of the runner in sessions of their own that are no test
        self._session = os.getsid(0)
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="reaper", daemon=True)

    @staticmethod
    def start() -> Adopter | None:
        """Make this process the subreaper of its descendants; None where Linux refuses."""
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return None
        adopter = Adopter()
        adopter._reaper.start()
        return adopter

    # what the runner and the runs tell it
    def ignore(self, pid: int) -> None:
        """A child of the runner's own in a session of its own (the watchdog)."""
        with self.lock:
            self._own.add(pid)

    def started(self, key: str, label: str, test_pid: int) -> None:
        """Called with `lock` held, right after the test process started."""
        self._spans[key] = _Span(label, test_pid, _now())

    def ended(self, key: str) -> None:
        with self.lock:
            span = self._spans.get(key)
            if span is not None and span.end is None:
                span.end = _now()

    # what it finds
    def _adopted(self) -> tuple[list[Proc], dict[str, _Span]]:
        """Adopted processes (children of the runner in a session that is not the runner's, and neither a
        test process nor one of the runner's own), and the runs' spans as they were then."""
        with self.lock:
            spans = {k: _Span(s.label, s.test_pid, s.start, s.end) for k, s in self._spans.items()}
            known = self._own | {s.test_pid for s in spans.values()}
            found = [_stat(pid) for pid in _children() if pid not in known]
        return [p for p in found if p is not None and p.session != self._session], spans

    @staticmethod
    def _owners(proc: Proc, spans: dict[str, _Span]) -> list[str]:
        """The runs it may have come from: the one whose test's session it is in, else those live at its birth."""
        by_session = [k for k, s in spans.items() if s.test_pid == proc.session]
        if by_session:
            return by_session
        return [k for k, s in spans.items()
                if s.start - SPAN_SLACK_S <= proc.started and (s.end is None or proc.started <= s.end + SPAN_SLACK_S)]

    def members(self, key: str) -> list[int]:
        """The living adopted processes that can only be this run's."""
        found, spans = self._adopted()
        return [p.pid for p in found if p.state != "Z" and self._owners(p, spans) == [key]]

    def _reap_loop(self) -> None:
        while not self._stop.wait(REAP_EVERY_S):
            self.reap()

    def reap(self) -> None:
        for proc in self._adopted()[0]:
            if proc.state == "Z":
                try:
                    os.waitpid(proc.pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def close(self, settle_s: float = 5.0) -> list[str]:
        """Kill what is still adopted when every run has ended; name each with the runs it may have come from."""
        self._stop.set()
        found, spans = self._adopted()
        left = [p for p in found if p.state != "Z"]
        described = []
        for proc in left:
            owners = sorted(spans[k].label for k in self._owners(proc, spans)) or ["no run that was live"]
            described.append(f"{_describe(proc.pid)} (from {' or '.join(owners)})")
        deadline = time.monotonic() + settle_s
        while left and time.monotonic() < deadline:
            for proc in left:
                try:
                    os.kill(proc.pid, 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
            self.reap()
            left = [p for p in self._adopted()[0] if p.state != "Z"]
        self.reap()
        return described
