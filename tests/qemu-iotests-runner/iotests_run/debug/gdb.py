"""gdb, the one way the runner and `block-state` run it: the command line (`argv`: batch mode, no init
files, the commands, the target), the walker's commands (`block_state_commands`), and a bounded run in its
own session (`run`: SIGTERM first, on which gdb detaches from a live process, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GDB_SCRIPT = Path(__file__).resolve().parent / "gdbscripts" / "block_state.py"
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding iotests_run


def argv(gdb: str, commands: Sequence[str], target: Sequence[str]) -> list[str]:
    """gdb in batch mode without init files, running commands on target (["-p", PID], [PROGRAM, CORE],
    ["-c", CORE])."""
    return [gdb, "-batch", "-nx", *(word for command in commands for word in ("-ex", command)), *target]


def block_state_commands(json_out: Path, perturb: int | None = None) -> list[str]:
    """The walker's commands, writing the block layer as JSON into json_out. perturb: the run's MALLOC_PERTURB_
    byte, with which glibc fills what is freed (the walker's crash facts say whether a pointer's memory holds
    it); without it the walker reads the process's own environment."""
    fill = [f"set $iotests_perturb = {perturb}"] if perturb is not None and 0 < perturb < 256 else []
    return [*fill, *walker_setup(), f"iotests-block-state {json_out}"]


def walker_setup() -> list[str]:
    """The gdb commands that load the walker: its modules (gdbscripts/walker_*.py) are imported by their
    package name, so the package's folder goes on gdb's Python path first."""
    return [f"python import sys; sys.path.insert(0, {str(PACKAGE_PARENT)!r})", f"source {GDB_SCRIPT}"]


GDB_GRACE_S = 5.0


@dataclass(frozen=True)
class GdbRun:
    output: str  # what gdb printed, stdout and stderr together
    failure: str  # "" when gdb finished; else why not ("gdb did not finish within 60 s")


def run(argv: list[str], timeout: float) -> GdbRun:
    """gdb in batch mode in its own session, bounded in time. Its output tells why it read nothing (an
    attach refused, a file that is no core). Past the time it gets SIGTERM first, on which gdb detaches
    from a live process (one killed outright can leave it stopped), then SIGKILL."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as exc:
        return GdbRun("", f"gdb could not run: {exc.strerror or exc}")
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        return GdbRun("", f"gdb did not finish within {timeout:g} s")
    return GdbRun(out.decode("utf-8", errors="replace"), "")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, GDB_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.communicate(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
