"""Evidence from a hung or timed-out run, collected before it is killed, bounded in time.

- processes.txt: the run's processes (pid, parent, state, kernel wait channel, CPU, command);
- gdb-PID-NAME.txt for every QEMU process: all threads' backtraces, and QEMU's
  coroutine-aware `qemu bt` when the tree has scripts/qemu-gdb.py;
- py-spy-PID.txt for every Python process: every thread's Python stack
  (py-spy dump; without py-spy, SIGABRT makes iotests.py's faulthandler print
  the stacks into the test's output).

A crashed run's cores are examined in cores.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from iotests_run import DEPS
from iotests_run.debug import blockstate, hang
from iotests_run.debug import gdb as gdb_run

QEMU_PROGRAMS = re.compile(r"^(qemu-system-.*|qemu-img|qemu-io|qemu-nbd|qemu-storage-daemon)$")
PER_TOOL_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Evidence:
    files: tuple[str, ...]  # names inside the diagnostics folder
    summary: str  # a few lines for the JUnit element text and the summary
    cause: str = ""  # cores: what the first one says ended its process ("qemu-io died of SIGSEGV")
    # Why it hung or crashed, computed from the dump: one to three lines, the first one complete on its own
    # ("deadlock: thread 1 (main) holds AioContext iothread0 ..."); it leads the run's reason.
    explanation: str = ""


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _describe(pid: int) -> tuple[str, list[str]]:
    p = psutil.Process(pid)
    with p.oneshot():
        cmd = p.cmdline() or [p.name()]
        cpu = p.cpu_times()
        line = (f"{pid:>7} {p.ppid():>7} {p.status():<10} {_read(f'/proc/{pid}/wchan'):<24} "
                f"{cpu.user + cpu.system:8.2f}  {' '.join(cmd)}")
    return line, cmd


def _is_python(cmd: list[str]) -> bool:
    return bool(cmd) and os.path.basename(cmd[0]).startswith("python")


def tool(name: str) -> str | None:
    """A tool installed beside our interpreter (py-spy in our venv), in a QEMU tree's _deps, or on PATH."""
    for folder in (Path(sys.executable).parent, DEPS / "bin"):
        if (folder / name).is_file() and os.access(folder / name, os.X_OK):
            return str(folder / name)
    return shutil.which(name)


def _tool_output(argv: list[str], timeout: float) -> str:
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout)
        return proc.stdout + (f"\n[stderr]\n{proc.stderr}" if proc.stderr.strip() else "")
    except subprocess.TimeoutExpired:
        return f"{argv[0]} did not finish within {timeout:.0f} s"
    except OSError as exc:
        return f"{argv[0]} could not run: {exc}"


def _run_tool(argv: list[str], out: Path, timeout: float) -> str:
    """The tool's output, also kept in out."""
    text = _tool_output(argv, timeout)
    out.write_text(text, encoding="utf-8")
    return text


def _gdb(gdb: str, pid: int, name: str, folder: Path, qemu_gdb: Path | None,
         timeout: float) -> tuple[list[str], list[str]]:
    """Every thread's backtrace, the block-layer state (blockstate.py) and `qemu bt`, in one attach."""
    block = f"block-{pid}-{name}"
    commands = ["set pagination off", "thread apply all bt", *gdb_run.block_state_commands(folder / f"{block}.json")]
    if qemu_gdb is not None:
        commands += [f"source {qemu_gdb}", "echo \\n=== qemu bt (coroutine-aware) ===\\n", "qemu bt"]
    argv = gdb_run.argv(gdb, commands, ["-p", str(pid)])
    file = f"gdb-{pid}-{name}.txt"
    text = _run_tool(argv, folder / file, timeout)
    cut = [f"{name} ({pid}): gdb did not finish within {timeout:.0f} s (load average {os.getloadavg()[0]:.1f}): "
           "its backtraces and block state are cut"] if f"did not finish within {timeout:.0f} s" in text else []
    # The main thread ("Thread 1", listed last) says most about a stuck QEMU.
    main = text[text.rfind("\nThread 1 "):] if "\nThread 1 " in text else text
    frames = [line for line in main.splitlines() if line.startswith("#")]
    state = blockstate.load(folder / f"{block}.json")
    files = [file, *blockstate.write(state, folder, block, f"Block-layer state of {name} ({pid}), live")]
    if (folder / f"{block}.json").is_file():
        files.append(f"{block}.json")
    return files, [f"{name} ({pid}) main thread: " + " <- ".join(frame_function(f) for f in frames[:7]),
                   blockstate.summary(state, f"{name} ({pid})"), *cut]


def frame_function(frame: str) -> str:
    m = re.search(r"\bin (\S+) \(|^#\d+\s+(\S+) \(", frame)
    return (m.group(1) or m.group(2)) if m else frame[:40]


def _pyspy(pyspy: str, pid: int, folder: Path, timeout: float) -> tuple[str, str]:
    file = f"py-spy-{pid}.txt"
    text = _run_tool([pyspy, "dump", "--pid", str(pid)], folder / file, timeout)
    frames = [line.strip() for line in text.splitlines() if line.startswith("    ")]
    return file, f"python ({pid}): " + " <- ".join(f.split(" (")[0] for f in frames[:6])


def collect(pids: list[int], folder: Path, qemu_gdb: Path | None, budget_s: float) -> Evidence:
    """Write what can be learnt about these processes into folder, within budget_s seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    rows = [f"{'PID':>7} {'PPID':>7} {'STATE':<10} {'WCHAN':<24} {'CPU s':>8}  COMMAND"]
    commands: dict[int, list[str]] = {}
    for pid in sorted(pids):
        try:
            line, cmd = _describe(pid)
        except psutil.Error:
            continue
        rows.append(line)
        commands[pid] = cmd
    (folder / "processes.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    files, summary = ["processes.txt"], [f"{len(commands)} processes (processes.txt)"]
    gdb, pyspy = tool("gdb"), tool("py-spy")
    qemus = [pid for pid, cmd in commands.items() if cmd and QEMU_PROGRAMS.match(os.path.basename(cmd[0]))]
    # QEMU processes first: they say most, and under load gdb needs more than PER_TOOL_TIMEOUT_S to load QEMU's symbols
    for pid, cmd in sorted(commands.items(), key=lambda item: item[0] not in qemus):
        left = deadline - time.monotonic()
        if left < 1:
            summary.append("diagnostics budget used up; later processes not examined")
            break
        name = os.path.basename(cmd[0]) if cmd else "?"
        if QEMU_PROGRAMS.match(name) and gdb:
            written, lines = _gdb(gdb, pid, name, folder, qemu_gdb, gdb_share(left, len(qemus)))
            qemus.remove(pid)
        elif _is_python(cmd) and pyspy:
            file, line = _pyspy(pyspy, pid, folder, min(PER_TOOL_TIMEOUT_S, left))
            written, lines = [file], [line]
        elif _is_python(cmd):
            os.kill(pid, signal.SIGABRT)  # iotests.py enables faulthandler: stacks go to the test output
            written, lines = [], [f"python ({pid}): SIGABRT sent, faulthandler stacks in the test output"]
        else:
            continue
        files += written
        summary += lines
    return Evidence(tuple(files), "\n".join(summary), explanation=_hang_explanation(folder, commands))


def gdb_share(left: float, qemus_left: int) -> float:
    """gdb's time on one live QEMU: PER_TOOL_TIMEOUT_S, or more when the budget left, shared by the QEMU processes
    still to examine, allows it (a loaded machine needs it to load QEMU's symbols); never more than is left."""
    return min(left, max(PER_TOOL_TIMEOUT_S, left / max(qemus_left, 1)))


def _hang_explanation(folder: Path, commands: dict[int, list[str]]) -> str:
    """Why the run is stuck, from the block-layer documents gdb wrote for its QEMU processes (a deadlock
    first, else the first process that says anything); the process is named at the end of the first line."""
    found: list[tuple[str, str]] = []
    for pid, cmd in commands.items():
        name = os.path.basename(cmd[0]) if cmd else "?"
        path = folder / f"block-{pid}-{name}.json"
        if not QEMU_PROGRAMS.match(name) or not path.is_file():
            continue
        text = hang.explain(blockstate.load(path))
        if text:
            found.append((f"{name} {pid}", text))
    if not found:
        return ""
    who, text = sorted(found, key=lambda f: not f[1].startswith("deadlock"))[0]
    first, *rest = text.splitlines()
    return "\n".join([f"{first} [{who}]", *rest])
