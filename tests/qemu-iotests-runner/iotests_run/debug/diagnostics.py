"""Evidence from a hung or timed-out run, collected before it is killed, bounded in time.

- processes.txt: the run's processes (pid, parent, state, kernel wait channel, CPU, command);
- gdb-PID-NAME.txt for every QEMU process: all threads' backtraces, and QEMU's
  coroutine-aware `qemu bt` when the tree has scripts/qemu-gdb.py;
- py-spy-PID.txt for every Python process: every thread's Python stack
  (py-spy dump; without py-spy, SIGABRT makes iotests.py's faulthandler print
  the stacks into the test's output).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from iotests_run import DEPS
from iotests_run.debug import blockstate, crash, hang
from iotests_run.debug import gdb as gdb_run
from iotests_run.debug.corefile import core_program, read_notes
from iotests_run.errors import UsageError
from iotests_run.inputs import read_head
from iotests_run.text import printable

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
    return files, [f"{name} ({pid}) main thread: " + " <- ".join(_frame_function(f) for f in frames[:7]),
                   blockstate.summary(state, f"{name} ({pid})"), *cut]


def _frame_function(frame: str) -> str:
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


ELF_MAGIC = b"\x7fELF"


# What check_core reads of a core: its ELF header and program headers (65535 of them need 3.6 MB).
CORE_HEAD_BYTES = 4 << 20
ET_CORE = 4
PN_XNUM = 0xFFFF
PT_LOAD, PT_NOTE = 1, 4
ELF_KINDS = {1: "a relocatable object", 2: "an executable", 3: "a shared object or PIE executable"}
# Per ELF class: the file header, the program header (type, offset, file size picked out), sh_info of section 0.
_ELF_LAYOUT = {
    1: ("16sHHIIIIIHHHHHH", "IIIIIIII", (0, 1, 4), 28),
    2: ("16sHHIQQQIHHHHHH", "IIQQQQQQ", (0, 2, 5), 44),
}


def check_core(path: Path, what: str) -> None:
    """Refuse what gdb would open without complaint and then read nothing from: an empty or text file,
    an ELF file that is not a core, a gzip'd core, a core cut short (gdb then reads the program's
    static data, and the block state says "0 nodes"). Only the headers are read."""
    head, size = read_head(path, what, CORE_HEAD_BYTES)
    name = printable(str(path))
    if head[:2] == b"\x1f\x8b":
        raise UsageError(f"{what}: {name} is gzip-compressed; gunzip it first")
    if head[:4] != ELF_MAGIC:
        raise UsageError(f"{what}: {name} is not a core file ({'empty' if not head else 'not ELF'})")
    layout = _ELF_LAYOUT.get(head[4]) if len(head) > 5 and head[5] in (1, 2) else None
    if layout is None:
        raise UsageError(f"{what}: {name} is an ELF file of unknown class or byte order")
    order = "<" if head[5] == 1 else ">"
    header, program, picks, sh_info_at = (order + layout[0], order + layout[1], layout[2], layout[3])
    if len(head) < struct.calcsize(header):
        raise UsageError(f"{what}: {name} is truncated (within its ELF header)")
    fields = struct.unpack_from(header, head)
    e_type, e_phoff, e_shoff, e_phentsize, e_phnum = fields[1], fields[5], fields[6], fields[9], fields[10]
    if e_type != ET_CORE:
        raise UsageError(f"{what}: {name} is {ELF_KINDS.get(e_type, f'an ELF file of type {e_type}')}, not a core")
    if e_phnum == PN_XNUM:  # the count is in section header 0
        e_phnum = _u32(head, e_shoff + sh_info_at, order)
    _check_segments(head, size, e_phoff, e_phentsize, e_phnum, program, picks, f"{what}: {name}")


def _u32(head: bytes, offset: int, order: str) -> int:
    return int(struct.unpack_from(order + "I", head, offset)[0]) if 0 <= offset <= len(head) - 4 else 0


def _check_segments(head: bytes, size: int, phoff: int, phentsize: int, phnum: int, program: str,
                    picks: tuple[int, int, int], named: str) -> None:
    """Every program header readable, every segment's bytes within the file."""
    if phnum == 0 or phentsize < struct.calcsize(program):
        raise UsageError(f"{named} has no program headers (a core lists its memory in them)")
    table_end = phoff + phnum * phentsize
    if table_end > size:
        raise UsageError(f"{named} is truncated ({size} bytes; its program headers end at byte {table_end})")
    if table_end > len(head):
        raise UsageError(f"{named}: its program headers end beyond the first {CORE_HEAD_BYTES >> 20} MB")
    loads, needed = 0, 0
    for i in range(phnum):
        entry = struct.unpack_from(program, head, phoff + i * phentsize)
        p_type, p_offset, p_filesz = (entry[k] for k in picks)
        if p_type in (PT_LOAD, PT_NOTE) and p_filesz:
            needed = max(needed, p_offset + p_filesz)
        loads += p_type == PT_LOAD
    if not loads:
        raise UsageError(f"{named} has no memory segments (no PT_LOAD)")
    if needed > size:
        raise UsageError(f"{named} is truncated ({size} bytes; its segments need {needed})")


def core_files(upper: Path) -> list[Path]:
    """Core files the kernel wrote into a run's overlay (core_pattern `core`, `core.%p`, ...)."""
    found = []
    for path in sorted(upper.rglob("core*")) if upper.is_dir() else []:
        try:
            if path.is_file() and not path.is_symlink():
                with path.open("rb") as f:
                    if f.read(4) == ELF_MAGIC:
                        found.append(path)
        except OSError:
            continue
    return found


def core_origin(core: Path, programs: Sequence[Path] = ()) -> tuple[str, str]:
    """The program to read a core with and the signal that ended it, from the core's own notes (corefile.py):
    one of the programs the runner launched, else the executable the core maps; never the command line in
    gdb's "Core was generated by" (the kernel cuts it at 80 bytes)."""
    notes = read_notes(core)
    program = core_program(notes, programs)
    return (str(program) if program is not None else ""), _signal_name(notes.signal)


def _signal_name(number: int) -> str:
    if number <= 0:
        return "a signal"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _core_problem(core: Path) -> str:
    """Why a core's memory cannot be walked (cut short at the core size limit, say), "" when it can:
    gdb would read the program's static data instead and report an empty block graph."""
    try:
        check_core(core, "core")
    except UsageError as exc:
        return str(exc).removeprefix(f"core: {printable(str(core))} ")
    return ""


def _compress(path: Path) -> Path:
    """gzip a kept core (QEMU's are hundreds of MB, mostly zeros; CI artifact limits are not)."""
    packed = path.with_name(path.name + ".gz")
    with path.open("rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    path.unlink()
    return packed


def _gdb_on_core(argv: list[str], out: Path, timeout: float) -> tuple[str, str]:
    """gdb's output on a core (kept in out, also when cut short) and, when it did not finish, what was cut."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                              timeout=timeout)
        text, cut = proc.stdout + (f"\n[stderr]\n{proc.stderr}" if proc.stderr.strip() else ""), ""
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        cut = f"gdb did not finish within {timeout:.0f} s (load average {os.getloadavg()[0]:.1f})"
        text = f"{partial}\n[{cut}; what follows this line was not read]\n"
    except OSError as exc:
        text, cut = f"gdb could not run: {exc}", f"gdb could not run: {exc}"
    out.write_text(text, encoding="utf-8")
    return text, cut


def examine_cores(cores: list[Path], folder: Path, cwd: Path, budget_s: float, programs: Sequence[Path] = (),
                  perturb: int | None = None) -> Evidence:
    """Keep each core in folder (gzipped), with gdb's backtrace of every thread (the crashing one first) and,
    for a QEMU program, the block-layer state and the crash's facts (the walker's "crash": signal or
    assertion, QEMU's own frames, their pointers checked against the live graph; perturb is the run's
    MALLOC_PERTURB_ byte, which freed memory holds). Each core is read with the program the runner
    launched (programs: QEMU_PROG, QEMU_IO_PROG, ...) that wrote it, found from the core's notes."""
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    gdb = tool("gdb")
    files: list[str] = []
    summary: list[str] = []
    causes: list[str] = []
    explanations: list[str] = []
    block_lines: list[str] = []
    for n, core in enumerate(cores, 1):
        kept = folder / f"core-{n}"
        shutil.move(str(core), kept)
        left = deadline - time.monotonic()
        program, signame = core_origin(kept, programs)
        if gdb is None or left < 1:
            files.append(_compress(kept).name)
            summary.append(f"core kept: {kept.name}.gz ({'no gdb' if gdb is None else 'no time left'} for a backtrace)")
            causes.append(summary[-1])
            continue
        name = os.path.basename(program) or read_notes(kept).command or "?"
        bt_file = f"core-{n}-{name}-backtrace.txt"
        block = f"core-{n}-{name}-block"
        commands = ["set pagination off", "bt"]
        unread = _core_problem(kept) if QEMU_PROGRAMS.match(name) else ""
        walk = bool(QEMU_PROGRAMS.match(name)) and not unread and bool(program)
        if walk:  # the walker before the other threads' backtraces: under load, what explains the crash comes first
            commands += ["echo \\n=== block state ===\\n",
                         *gdb_run.block_state_commands(folder / f"{block}.json", perturb)]
        commands += ["echo \\n=== all threads ===\\n", "thread apply all bt"]
        argv = gdb_run.argv(gdb, commands, [program, str(kept)] if program else ["-c", str(kept)])
        # what is left of the budget, shared by the cores still to read (gdb loading QEMU's symbols is slow under load)
        share = max(deadline - time.monotonic(), 1) / (len(cores) - n + 1)
        text, cut = _gdb_on_core(argv, folder / bt_file, share)
        files += [_compress(kept).name, bt_file]
        if unread:
            block_lines.append(f"{name} ({kept.name}) block: not read: the core {unread}")
        elif not program and QEMU_PROGRAMS.match(name):
            block_lines.append(f"{name} ({kept.name}) block: not read: the program that wrote the core is not known")
        state: dict[str, object] = {}
        if walk:
            state = blockstate.load(folder / f"{block}.json")
            files += blockstate.write(state, folder, block, f"Block-layer state of {name} from {kept.name}")
            if (folder / f"{block}.json").is_file():
                files.append(f"{block}.json")
            block_lines.append(blockstate.summary(state, f"{name} ({kept.name})"))
        if cut:
            block_lines.append(f"{name} ({kept.name}): {cut}: {_what_was_cut(state, walk)}")
        crashing = text.split("=== block state ===")[0].split("=== all threads ===")[0]
        # gdb shows frame #0 once when it loads the core and again in `bt`: one line per frame number
        frames = list({line.split()[0]: line for line in reversed(crashing.splitlines())
                       if line.startswith("#")}.values())[::-1]
        causes.append(f"{name} died of {signame}")
        summary.append(f"{causes[-1]}, core kept ({kept.name}.gz): "
                       + " <- ".join(_frame_function(f) for f in frames[:7]))
        explanations.append(_explanation(state, name, signame, cut))
    found = [e for e in explanations if e]
    return Evidence(tuple(files), "\n".join(summary + block_lines), causes[0] if causes else "",
                    found[0] if found else "")


def _what_was_cut(state: dict[str, object], walk: bool) -> str:
    if not walk or "error" not in state:
        return "later threads' backtraces cut"
    return "block state not read (crash facts kept)" if "crash" in state else "block state and crash facts not read"


def _explanation(state: dict[str, object], name: str, signame: str, cut: str) -> str:
    """The crash explained from the walker's "crash" facts (debug/crash.py); "" when there are none."""
    facts = state.get("crash") if isinstance(state, dict) else None
    if not isinstance(facts, dict):
        return f"{name} died of {signame}; not explained: {cut}" if cut else ""
    return "\n".join(crash.explain(facts, name))
