"""`iotests-run block-state`: the block-layer dump of one QEMU process or core, on a developer's desk.

    iotests-run block-state (--pid PID | --core CORE [--exe BINARY]) [--dot FILE] [--svg FILE] [--json FILE]

The same walker the runner uses on hung and crashed runs (gdbscripts/block_state.py, reading
memory only); the readable dump goes to stdout. A missing process or core, a program that is
not QEMU, a binary without debug info: one line, exit 2.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psutil

from iotests_run.debug import blockstate
from iotests_run.debug.diagnostics import QEMU_PROGRAMS, core_origin, tool
from iotests_run.errors import Parser, SetupError, UsageError
from iotests_run.text import terminal_safe

TIMEOUT_S = 60.0


def _target(gdb: str, pid: int | None, core: str | None, exe: str | None) -> tuple[list[str], str, str]:
    """gdb's arguments naming the target, the program (and pid) it is, and where it is read from."""
    if pid is not None:
        try:
            process = psutil.Process(pid)
            program = process.exe()
        except psutil.NoSuchProcess:
            raise UsageError(f"--pid {pid}: no such process") from None
        except psutil.AccessDenied:
            raise UsageError(f"--pid {pid}: not allowed to examine it") from None
        name = os.path.basename(program)
        if not QEMU_PROGRAMS.match(name):
            raise UsageError(f"--pid {pid} is {name}, not a QEMU program (qemu-system-*, qemu-img, qemu-io, "
                             "qemu-nbd, qemu-storage-daemon)")
        return ["-p", str(pid)], f"{name} ({pid})", "live"
    core_path = Path(str(core))
    if not core_path.is_file():
        raise UsageError(f"--core {core}: no such file")
    program = exe or core_origin(gdb, core_path, TIMEOUT_S)[0]
    if not program:
        raise UsageError(f"--core {core}: gdb cannot tell which program wrote it; name it with --exe")
    if not Path(program).is_file():
        raise UsageError(f"--exe {program}: no such file" if exe else
                         f"--core {core} was written by {program}, which is not here; name it with --exe")
    return [program, str(core_path)], os.path.basename(program), f"from {core_path.name}"


def main(argv: Sequence[str]) -> int:
    p = Parser(prog="iotests-run block-state",
               description="QEMU's block-layer state (graph, requests in flight with their coroutines' "
                           "backtraces, jobs) read from a process or a core by gdb, calling no function in it.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=int, help="a running QEMU process")
    which.add_argument("--core", metavar="CORE", help="a core file of a QEMU program")
    p.add_argument("--exe", metavar="BINARY", help="the program that wrote the core (default: as the core says)")
    p.add_argument("--dot", metavar="FILE", type=Path, help="also write the graph for graphviz")
    p.add_argument("--svg", metavar="FILE", type=Path, help="also write the graph rendered (needs graphviz's dot)")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the walker's document")
    args = p.parse_args(argv)
    if args.exe and args.pid is not None:
        raise UsageError("--exe goes with --core (a live process names its own program)")
    gdb = tool("gdb")
    if gdb is None:
        raise SetupError("block-state needs gdb (Debian's gdb package)")
    target, who, where = _target(gdb, args.pid, args.core, args.exe)
    title = f"Block-layer state of {who}, {where}"
    with tempfile.TemporaryDirectory(prefix="iotests-run-block-") as tmp:
        out = Path(tmp) / "state.json"
        blockstate.run_gdb([gdb, "-batch", "-nx", *blockstate.gdb_commands(out), *target], TIMEOUT_S)
        state = blockstate.load(out)
    if "error" in state:
        raise UsageError(f"{who} {where}: {state['error']}")
    print(terminal_safe(blockstate.text(state, title)), end="")
    print(terminal_safe(blockstate.summary(state, who)))
    graph = blockstate.dot(state, title)
    if args.dot:
        args.dot.write_text(graph, encoding="utf-8")
    if args.svg:
        image = blockstate.svg(graph)
        if image is None:
            raise SetupError("--svg needs graphviz's dot (Debian's graphviz package)")
        args.svg.write_bytes(image)
    if args.json:
        args.json.write_text(blockstate.json_text(state), encoding="utf-8")
    return 0
