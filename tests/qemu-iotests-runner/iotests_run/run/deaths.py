"""Whether a process of a run died of a crash signal while the test goes on (or waits for it forever).

A Python test whose QEMU died of SIGSEGV may then wait for an event that will never come: without
this the run would be called a hang when the hang limit ran out, its core examined after the
fact. Two signs are watched, once a second while the test runs:
- a core file the kernel finished writing into the run's overlay (core_pattern `core`): finished
  when the segments its headers list are all in the file (cores.check_core), or when its size
  has not changed for STABLE_TICKS ticks (a core cut at the size limit never completes). A core is
  never reported while it is written: killing the dumping process would cut it short;
- a zombie among the test's descendants whose exit status says a crash signal ended it (read from
  /proc/PID/stat's exit_code: the status waitpid() will return), before its parent reaps it.
supervise ends the run as a crash once the test, after such a death, stays idle for a few seconds.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from iotests_run.debug.corefile import read_notes
from iotests_run.debug.cores import check_core, core_files
from iotests_run.errors import UsageError

CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}
STABLE_TICKS = 3
EXIT_CODE_FIELD = 52  # /proc/PID/stat, counted from 1 (Linux 3.5+)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def core_complete(core: Path) -> bool:
    """Whether the kernel has written every segment the core's headers list."""
    try:
        check_core(core, "core")
        return True
    except UsageError:
        return False


def zombie_exit_signal(pid: int) -> int:
    """The signal that ended a zombie (its exit status as waitpid() will see it), 0 when none or unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return 0
    # the command (field 2) may hold spaces and parentheses: count fields from its closing one
    fields = stat[stat.rfind(")") + 2:].split()
    if not fields or fields[0] != "Z" or len(fields) < EXIT_CODE_FIELD - 2:
        return 0
    try:
        return int(fields[EXIT_CODE_FIELD - 3]) & 0x7F
    except ValueError:
        return 0


@dataclass
class DeathWatch:
    """Watches one run for a process that died of a crash signal; `seen` says which and of what."""

    upper: Path | None  # the run's overlay (cores land there); None without core dumps
    test_pid: int
    seen: str = ""
    since: float = 0.0
    _sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)  # core -> (size, ticks unchanged)

    def check(self, now: float) -> str:
        """What died of what, once something has ("" until then)."""
        if not self.seen:
            self.seen = self._finished_core() or self._crashed_zombie()
            if self.seen:
                self.since = now
        return self.seen

    def _finished_core(self) -> str:
        for core in core_files(self.upper) if self.upper is not None else []:
            try:
                size = core.stat().st_size
            except OSError:
                continue
            last, ticks = self._sizes.get(core, (-1, 0))
            ticks = ticks + 1 if size == last else 0
            self._sizes[core] = (size, ticks)
            if core_complete(core) or ticks >= STABLE_TICKS:
                notes = read_notes(core)
                what = _signal_name(notes.signal) if notes.signal else "a signal"
                name = os.path.basename(notes.executable) or notes.command or "a process"  # comm is cut at 15
                return f"{name} died of {what} (core dumped)"
        return ""

    def _crashed_zombie(self) -> str:
        for pid in descendants(self.test_pid):
            number = zombie_exit_signal(pid)
            if number in CRASH_SIGNALS:
                try:
                    name = psutil.Process(pid).name()
                except psutil.Error:
                    name = "a process"
                return f"{name} ({pid}) died of {_signal_name(number)}"
        return ""


MAX_DESCENDANTS = 4096
# /proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN; without it psutil scans every process.
KERNEL_LISTS_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _children(pid: int) -> list[int]:
    """A process's children, from the kernel's per-thread lists (no scan of every process on the machine)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                found += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below pid (bounded), read once a second for each run: cheap whatever the machine runs."""
    if not KERNEL_LISTS_CHILDREN:
        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)][:MAX_DESCENDANTS]
        except psutil.Error:
            return []
    out: list[int] = []
    todo = _children(pid)
    while todo and len(out) < MAX_DESCENDANTS:
        child = todo.pop()
        if child not in out:
            out.append(child)
            todo += _children(child)
    return out
