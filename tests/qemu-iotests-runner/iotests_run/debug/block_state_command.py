"""`iotests-run block-state`: the block-layer dump of one QEMU process or core, on a developer's desk.

    iotests-run block-state (--pid PID | --core CORE [--exe BINARY]) [--dot FILE] [--svg FILE] [--json FILE]

The same walker the runner uses on hung and crashed runs (gdbscripts/block_state.py, reading
memory only); the readable dump goes to stdout. A missing process or core, a program that is
not QEMU, a binary without debug info, a core that is not one or is cut short, a process gdb
cannot attach to, an output file that cannot be written: one line, exit 2. Everything that can
be checked is checked before gdb stops the process; the files are rendered whole first and each
written to a temporary file renamed over its name, so none is left half written.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from iotests_run.debug import blockstate, crash
from iotests_run.debug import gdb as gdb_run
from iotests_run.debug.cores import check_core, core_origin
from iotests_run.debug.diagnostics import QEMU_PROGRAMS, tool
from iotests_run.errors import Parser, SetupError, UsageError
from iotests_run.files import write_atomically
from iotests_run.inputs import read_optional
from iotests_run.text import printable, terminal_safe

TIMEOUT_S = 60.0
MAX_PID = 2**31 - 1  # the kernel's pid_max can be at most 2^22, pid_t is 32 bits
PF_KTHREAD = 0x00200000  # /proc/PID/stat's flags (include/linux/sched.h)
QEMU_NAMES = "qemu-system-*, qemu-img, qemu-io, qemu-nbd, qemu-storage-daemon"
# gdb's lines when it could not attach or load (gdb 12 and 13 spell them so).
GDB_REFUSALS = re.compile(r"^(?:warning: )?(process \d+ is already traced by process \d+|ptrace: .*"
                          r"|Could not attach to process\.|.* is not a core dump: .*)$", re.M)


def _pid(value: str) -> int:
    """A process id as the kernel has them: argparse's int took -1, 0 and 10**40, and psutil then raised."""
    if not re.fullmatch(r"[0-9]{1,10}", value) or not 1 <= int(value) <= MAX_PID:
        raise argparse.ArgumentTypeError(f"not a process id (1 to {MAX_PID}): {value}")
    return int(value)


def _parser() -> Parser:
    p = Parser(prog="iotests-run block-state",
               description="QEMU's block-layer state (graph, requests in flight with their coroutines' "
                           "backtraces, jobs) read from a process or a core by gdb, calling no function in it.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=_pid, help="a running QEMU process")
    which.add_argument("--core", metavar="CORE", help="a core file of a QEMU program (not gzip'd)")
    p.add_argument("--exe", metavar="BINARY", help="the program that wrote the core (default: as the core says)")
    p.add_argument("--dot", metavar="FILE", type=Path, help="also write the graph for graphviz")
    p.add_argument("--svg", metavar="FILE", type=Path, help="also write the graph rendered (needs graphviz's dot)")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the walker's document")
    return p


# Outputs ---------------------------------------------------------------------------------------------

def _check_output(option: str, path: Path) -> None:
    """An output that cannot be written is refused before gdb stops the process: an existing target must
    be a regular file (a directory, a device such as /dev/full, a link are not replaced), its folder
    must be there and writable."""
    name = f"{option} {printable(str(path))}"
    try:
        mode: int | None = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:  # a component that is a file, a name too long, a folder not searchable
        raise UsageError(f"{name}: cannot write there ({exc.strerror or exc})") from None
    if mode is not None and stat.S_ISLNK(mode):
        raise UsageError(f"{name}: a symbolic link, not followed (name the file it points to)")
    if mode is not None and stat.S_ISDIR(mode):
        raise UsageError(f"{name}: a directory (name a file in it)")
    if mode is not None and not stat.S_ISREG(mode):
        raise UsageError(f"{name}: not a regular file")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{name}: no such folder: {printable(str(folder))}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{name}: cannot write in {printable(str(folder))}")


def _outputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The outputs asked for, each checked, no two the same file."""
    outputs = [(f"--{kind}", getattr(args, kind)) for kind in ("dot", "svg", "json") if getattr(args, kind)]
    seen: dict[tuple[str, str], str] = {}
    for option, path in outputs:
        _check_output(option, path)
        key = (os.path.realpath(path.parent), path.name)
        if key in seen:
            raise UsageError(f"{seen[key]} and {option} name the same file: {printable(str(path))}")
        seen[key] = option
    return outputs


def _render(state: dict[str, Any], title: str, outputs: list[tuple[str, Path]]) -> dict[str, bytes]:
    """Every output's bytes, before any is written (an SVG that cannot be made leaves no .dot behind)."""
    graph = blockstate.dot(state, title)
    rendered = {"--dot": graph.encode(), "--json": blockstate.json_text(state).encode()}
    if any(option == "--svg" for option, _ in outputs):
        image = blockstate.svg(graph)
        if image is None:
            raise SetupError("--svg: graphviz's dot could not render the graph")
        rendered["--svg"] = image
    return rendered


def _write(option: str, path: Path, data: bytes) -> None:
    try:
        write_atomically(path, data)
    except OSError as exc:  # ENOSPC, EDQUOT, EROFS, EIO
        raise UsageError(f"{option} {printable(str(path))}: cannot write it ({exc.strerror or exc})") from None


# The target ------------------------------------------------------------------------------------------

def _proc_line(pid: int, name: str) -> str:
    return read_optional(Path(f"/proc/{pid}/{name}"), 8192) or ""


def _is_kernel_thread(pid: int, exe: str, cmdline: list[str]) -> bool:
    stat_line = _proc_line(pid, "stat")
    fields = stat_line[stat_line.rfind(")") + 2:].split()
    if len(fields) > 6 and fields[6].isdigit():
        return bool(int(fields[6]) & PF_KTHREAD)
    return not exe and not cmdline


def _tracer(pid: int) -> int:
    """The process tracing pid (a debugger, strace), 0 when none: the kernel lets only one attach."""
    found = re.search(r"^TracerPid:\s*(\d+)", _proc_line(pid, "status"), re.M)
    return int(found.group(1)) if found else 0


def _process_name(pid: int) -> str:
    try:
        return printable(psutil.Process(pid).name())
    except psutil.Error:
        return "?"


def _program(pid: int) -> str:
    """The name of the QEMU program running as pid, or one line saying what the process is instead."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            raise psutil.ZombieProcess(pid)
        comm, exe, cmdline = process.name(), process.exe(), process.cmdline()
    except psutil.ZombieProcess:
        raise UsageError(f"--pid {pid} is a zombie (it has ended; its parent has not collected it)") from None
    except psutil.NoSuchProcess:
        raise UsageError(f"--pid {pid}: no such process") from None
    except psutil.AccessDenied:
        raise UsageError(f"--pid {pid}: not allowed to examine it") from None
    if _is_kernel_thread(pid, exe, cmdline):
        raise UsageError(f"--pid {pid} is a kernel thread ({printable(comm)}), not a QEMU program")
    name = os.path.basename(exe) or comm
    if not QEMU_PROGRAMS.match(name):
        raise UsageError(f"--pid {pid} is not a QEMU program: {printable(name)} (QEMU's are {QEMU_NAMES})")
    tracer = _tracer(pid)
    if tracer:
        raise UsageError(f"--pid {pid} is already traced by process {tracer} ({_process_name(tracer)}); "
                         "gdb cannot attach while it is")
    return name


def _target(gdb: str, pid: int | None, core: str | None, exe: str | None) -> tuple[list[str], str, str]:
    """gdb's arguments naming the target, the program (and pid) it is, and where it is read from."""
    if pid is not None:
        name = _program(pid)
        return ["-p", str(pid)], f"{name} ({pid})", "live"
    core_path = Path(str(core))
    check_core(core_path, "--core")
    program = exe or core_origin(core_path)[0]
    if not program:
        raise UsageError(f"--core {core}: gdb cannot tell which program wrote it; name it with --exe")
    if not Path(program).is_file():
        raise UsageError(f"--exe {program}: no such file" if exe else
                         f"--core {core} was written by {program}, which is not here; name it with --exe")
    # absolute paths: a name starting with '-' would be one of gdb's options
    return [os.path.abspath(program), os.path.abspath(core_path)], os.path.basename(program), f"from {core_path.name}"


def _stopped(pid: int | None) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return False


def _walk(gdb: str, target: list[str], who: str, where: str, pid: int | None) -> dict[str, Any]:
    """The walker's document; one line when gdb could not attach, load the core, or finish in time."""
    was_stopped = _stopped(pid)
    with tempfile.TemporaryDirectory(prefix="iotests-run-block-") as tmp:
        out = Path(tmp) / "state.json"
        run = gdb_run.run(gdb_run.argv(gdb, gdb_run.block_state_commands(out), target), TIMEOUT_S)
        state = blockstate.load(out)
    if run.failure:
        if pid is not None and not was_stopped and _stopped(pid):  # gdb killed while the process was held
            os.kill(pid, signal.SIGCONT)
        raise SetupError(f"{who} {where}: {run.failure}; no block state read")
    refusal = GDB_REFUSALS.search(run.output)
    if "error" in state and refusal:
        verb = "attach" if pid is not None else "load the core"
        raise UsageError(f"{who} {where}: gdb could not {verb} ({refusal.group(1).rstrip('.')})")
    if "error" in state:
        raise UsageError(f"{who} {where}: {state['error']}")
    return state


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    if args.exe and args.pid is not None:
        raise UsageError("--exe goes with --core (a live process names its own program)")
    outputs = _outputs(args)
    gdb = tool("gdb")
    if gdb is None:
        raise SetupError("block-state needs gdb (Debian's gdb package)")
    if args.svg and shutil.which("dot") is None:
        raise SetupError("--svg needs graphviz's dot (Debian's graphviz package)")
    target, who, where = _target(gdb, args.pid, args.core, args.exe)
    title = f"Block-layer state of {who}, {where}"
    state = _walk(gdb, target, who, where, args.pid)
    rendered = _render(state, title, outputs)
    for option, path in outputs:
        _write(option, path, rendered[option])
    why = "".join(f"why: {line}\n" for line in crash.explain(state.get("crash"), who))  # a core of a crash
    _print(terminal_safe(blockstate.text(state, title)) + terminal_safe(blockstate.summary(state, who)) + "\n"
           + terminal_safe(why))
    return 0


def _print(text: str) -> None:
    """The dump on stdout, after the files: a reader that stops early (`| head`) ends it quietly, a stdout
    that cannot take it (`> /dev/full`) is one line; neither leaves Python a buffer to fail on at exit."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        if not isinstance(exc, BrokenPipeError):
            raise UsageError(f"cannot write the dump to stdout ({exc.strerror or exc})") from None
