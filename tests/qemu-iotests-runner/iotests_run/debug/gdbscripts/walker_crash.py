"""A crash's facts from a core: signal and faulting address, assertion or &error_abort, QEMU's first
frames with their pointer arguments checked against the live lists and the MALLOC_PERTURB_ fill (`crash_facts`).
Runs inside gdb (block_state.py)."""

from __future__ import annotations

import re
from typing import Any

import gdb

from iotests_run.debug.gdbscripts.walker_base import (
    MASK,
    MAX_NODES,
    _current_coroutine,
    _frame,
    _int,
    _items,
    _static,
    _string,
)

CRASH_SIGNALS = {4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 11: "SIGSEGV"}
FAULT_SIGNALS = {4, 7, 8, 11}  # their siginfo carries the faulting address (when si_code > 0: from the CPU)
MAX_SCANNED_FRAMES = 64  # frames looked at for QEMU's own (libc's and glib's abort plumbing comes first)
MAX_CRASH_FRAMES = 8  # QEMU frames whose pointer arguments are checked
MAX_LOCALS = 16  # locals read in the crashing frame
MAX_ENVIRON = 4096
FILL_WINDOW = 4096  # bytes of an object read to see whether it holds the fill byte
FILL_SHARE = 0.75  # at least this share of them: freed (the allocator keeps its own links in the first words)
# Pointer targets the graph can vouch for, by struct name: what they are.
KNOWN_TARGETS = {"BlockDriverState": "node", "BdrvChild": "child", "BlockBackend": "backend", "Job": "job",
                 "BlockJob": "job", "AioContext": "context"}
# glibc's assert() message: "prog: file:line: function: Assertion `expr' failed."; glib's g_assert():
# "ERROR:file:line:function: assertion failed: (expr)".
GLIBC_ASSERT = re.compile(r"(?:^|: )(?P<file>[^:\n]+):(?P<line>\d+): (?P<function>[^:\n]+): "
                          r"Assertion `(?P<expr>.*)' failed")
GLIB_ASSERT = re.compile(r"ERROR:(?P<file>[^:\n]+):(?P<line>\d+):(?P<function>[^:\n]+): "
                         r"(?:assertion failed: \((?P<expr>.*)\)|(?P<text>.*))")


def _siginfo() -> dict[str, Any] | None:
    """The signal the selected thread got ($_siginfo: from the core's NT_SIGINFO), if it is a crash signal."""
    try:
        info = gdb.parse_and_eval("$_siginfo")
        number, code = int(info["si_signo"]), int(info["si_code"])
    except (gdb.error, RuntimeError):
        return None
    if number not in CRASH_SIGNALS:
        return None
    out: dict[str, Any] = {"number": number, "name": CRASH_SIGNALS[number], "code": code, "address": None}
    if number in FAULT_SIGNALS and code > 0:  # raised by the CPU, not sent by kill/raise (code <= 0)
        try:
            out["address"] = hex(int(info["_sifields"]["_sigfault"]["si_addr"]))
        except (gdb.error, RuntimeError):
            pass
    return out


def _message(expression: str, offset: int = 0) -> str | None:
    """A C string read through a pointer variable of the C library (no debug info needed)."""
    try:
        pointer = int(gdb.parse_and_eval(f"*(unsigned long *)&{expression}"))
        if not pointer:
            return None
        return _string(gdb.Value(pointer + offset).cast(gdb.lookup_type("char").pointer()), 2048)
    except (gdb.error, RuntimeError):
        return None


def _assertion() -> dict[str, Any] | None:
    """The failed assertion's text, file, line and function: glibc keeps assert()'s message in __abort_msg
    (a struct whose text starts after a 4-byte size), glib keeps g_assert()'s in __glib_assert_msg."""
    for expression, offset, pattern in (("__abort_msg", 4, GLIBC_ASSERT), ("__glib_assert_msg", 0, GLIB_ASSERT)):
        text = _message(expression, offset)
        match = pattern.search(text) if text else None
        if text and match:
            found = match.groupdict()
            return {"expression": found.get("expr") or found.get("text"), "file": found["file"],
                    "line": int(found["line"]), "function": found["function"].strip(), "message": text.strip()}
    return None


ERROR_ABORT_FRAMES = {"error_handle", "error_handle_fatal"}  # util/error.c: 10.x, 7.2


def _error_abort() -> dict[str, Any] | None:
    """The Error that &error_abort aborted on (util/error.c's error_handle(errp, err) frame): its message and
    where it was set (src, line, func)."""
    frame: gdb.Frame | None = gdb.newest_frame()
    scanned = 0
    while frame is not None and scanned < MAX_SCANNED_FRAMES:
        scanned += 1
        if frame.name() in ERROR_ABORT_FRAMES:
            for name, value in _arguments(frame):
                if name != "err" or value.is_optimized_out or not int(value):
                    continue
                err = value.dereference()
                return {"message": _string(err["msg"], 1024), "file": _string(err["src"]),
                        "line": _int(err["line"]), "function": _string(err["func"])}
            return None
        try:
            frame = frame.older()
        except gdb.error:
            return None
    return None


def _fill_byte() -> int | None:
    """The MALLOC_PERTURB_ byte glibc fills freed memory with: the runner's (set as $iotests_perturb), else the
    one in the process's own environment."""
    given = gdb.convenience_variable("iotests_perturb")
    if given is not None:
        try:
            return int(given) & 0xFF or None
        except (gdb.error, ValueError):
            return None
    try:
        environ = gdb.parse_and_eval("*(char ***)&environ")
        for i in range(MAX_ENVIRON):
            entry = environ[i]
            if not int(entry):
                return None
            text = _string(entry, 256) or ""
            if text.startswith("MALLOC_PERTURB_="):
                return int(text.split("=", 1)[1] or "0") & 0xFF or None
    except (gdb.error, RuntimeError, ValueError):
        return None
    return None


def _live_objects() -> dict[str, dict[int, str]]:
    """What is live, by kind and address, with a name: every node (all_bdrv_states), its children and parent
    links, every backend, every job, and the AioContexts they use."""
    live: dict[str, dict[int, str]] = {kind: {} for kind in set(KNOWN_TARGETS.values())}
    main = _static("qemu_aio_context")
    if main is not None and int(main):
        live["context"][int(main)] = "the main AioContext"
    states = _static("all_bdrv_states")
    for bs in _items(states, "bs_list")[:MAX_NODES] if states is not None else []:
        b = bs.dereference()
        label = f"node '{_string(b['node_name']) or hex(int(bs))}'"
        live["node"][int(bs)] = label
        live["context"].setdefault(int(b["aio_context"]), f"the AioContext of {label}")
        for child in _items(b["children"], "next"):
            live["child"][int(child)] = f"child '{_string(child.dereference()['name'])}' of {label}"
        for child in _items(b["parents"], "next_parent"):
            live["child"].setdefault(int(child), f"child '{_string(child.dereference()['name'])}' -> {label}")
    backends = _static("block_backends")
    for blk in _items(backends, "link") if backends is not None else []:
        name, root = _string(blk.dereference()["name"]), blk.dereference()["root"]
        of = f" of {live['node'].get(int(root.dereference()['bs']), 'a node')}" if int(root) else ""
        live["backend"][int(blk)] = f"backend '{name}'" if name else f"the anonymous backend{of}"
    jobs = _static("jobs")
    for job in _items(jobs, "job_list") if jobs is not None else []:
        live["job"][int(job)] = f"job '{_string(job.dereference()['id'])}'"
        live["context"].setdefault(int(job.dereference()["aio_context"]), f"the AioContext of job "
                                   f"'{_string(job.dereference()['id'])}'")
    return live


def _target_kind(value: Any) -> tuple[str, str] | None:
    """(kind, struct name) when value is a pointer to a struct the graph can vouch for."""
    try:
        kind = value.type.strip_typedefs()
        if kind.code != gdb.TYPE_CODE_PTR:
            return None
        target = kind.target().strip_typedefs()
        tag = target.tag or target.name or ""
    except (gdb.error, RuntimeError):
        return None
    if tag in KNOWN_TARGETS:
        return KNOWN_TARGETS[tag], tag
    return ("job", tag) if tag.endswith("BlockJob") else None


def _fill_share(address: int, size: int, fill: int) -> float | None:
    """The share of an object's bytes (past the allocator's first words) that hold the fill byte; None when
    its memory cannot be read (unmapped: freed back to the system, or never a heap address)."""
    size = max(16, min(size, FILL_WINDOW))
    try:
        data = bytes(gdb.selected_inferior().read_memory(address, size))
    except (gdb.MemoryError, gdb.error, RuntimeError, OverflowError):
        return None
    window = data[32:] if len(data) > 64 else data
    return round(window.count(fill) / len(window), 3) if window else None


def _tcache_key() -> int | None:
    """glibc's tcache_key (2.34+, needs libc's debug symbols): the second word of every block in a tcache."""
    try:
        return int(gdb.parse_and_eval("tcache_key")) & MASK
    except (gdb.error, RuntimeError):
        return None


def _in_tcache(address: int, key: int | None) -> bool:
    """Whether the block at address sits freed in glibc's tcache: small blocks go there unfilled by
    MALLOC_PERTURB_, with the tcache's key in their second word."""
    if key is None:
        return False
    try:
        data = bytes(gdb.selected_inferior().read_memory(address + 8, 8))
    except (gdb.MemoryError, gdb.error, RuntimeError, OverflowError):
        return False
    return int.from_bytes(data, "little") == key


def _pointer(name: str, value: Any, live: dict[str, dict[int, str]], fill: int | None,
             key: int | None = None) -> dict[str, Any] | None:
    """A pointer argument of a known type, checked against the live lists (and, when not live, its memory)."""
    known = _target_kind(value)
    if known is None:
        return None
    kind, tag = known
    out: dict[str, Any] = {"name": name, "type": tag, "kind": kind}
    if value.is_optimized_out:
        return {**out, "optimized_out": True}
    try:
        address = int(value)
    except (gdb.error, RuntimeError):
        return {**out, "optimized_out": True}
    out["address"] = hex(address)
    if address == 0:
        return {**out, "null": True}
    label = live[kind].get(address)
    # an AioContext the graph does not use may still be live (an IOThread's): unknown, not "not live"
    out["live"] = True if label else (None if kind == "context" else False)
    if label:
        out["label"] = label
        return out
    share = _fill_share(address, value.type.strip_typedefs().target().sizeof, fill) if fill else None
    out["readable"] = share is not None if fill else _readable(address)
    if share is not None:
        out["fill_share"] = share
        out["fill"] = share >= FILL_SHARE
    if not out.get("fill") and _in_tcache(address, key):
        out["tcache"] = True
    return out


def _readable(address: int) -> bool:
    try:
        gdb.selected_inferior().read_memory(address, 1)
        return True
    except (gdb.MemoryError, gdb.error, RuntimeError, OverflowError):
        return False


def _arguments(frame: Any) -> list[tuple[str, Any]]:
    """A frame's arguments (its function's outermost block), values read in that frame."""
    try:
        block = frame.block()
        while block is not None and block.function is None:
            block = block.superblock
        if block is None:
            return []
        return [(sym.name, sym.value(frame)) for sym in block if sym.is_argument]
    except (gdb.error, RuntimeError):
        return []


def _locals(frame: Any) -> list[tuple[str, Any]]:
    """The local variables in scope at the frame's pc (innermost block outwards, the function's own included), at
    most MAX_LOCALS: a loop's iterator (`BdrvChild *c`) is where a freed list element shows."""
    out: list[tuple[str, Any]] = []
    try:
        block = frame.block()
        while block is not None and len(out) < MAX_LOCALS:
            out += [(sym.name, sym.value(frame)) for sym in block
                    if sym.is_variable and not sym.is_argument][:MAX_LOCALS - len(out)]
            if block.function is not None:
                break
            block = block.superblock
    except (gdb.error, RuntimeError):
        pass
    return out


def _is_qemu(frame: Any) -> bool:
    """A frame of the program itself (not of libc, glib or another shared library)."""
    try:
        return frame.name() is not None and gdb.solib_name(frame.pc()) is None
    except (gdb.error, RuntimeError):
        return False


def _crash_frames(live: dict[str, dict[int, str]], fill: int | None,
                  key: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The crashing thread's first QEMU frames, each with its known-type pointer arguments checked, and the
    names of the frames before them (the abort plumbing)."""
    frames: list[dict[str, Any]] = []
    plumbing: list[str] = []
    try:
        frame: gdb.Frame | None = gdb.newest_frame()
    except gdb.error:
        return frames, plumbing
    scanned = 0
    while frame is not None and scanned < MAX_SCANNED_FRAMES and len(frames) < MAX_CRASH_FRAMES:
        scanned += 1
        if _is_qemu(frame):
            out = _frame(frame)
            out["level"] = frame.level()
            out["pointers"] = [p for p in (_pointer(n, v, live, fill, key) for n, v in _arguments(frame)) if p]
            if not frames:  # the crashing frame's locals too (only there: outer frames' are stale)
                for name, value in _locals(frame):
                    checked = _pointer(name, value, live, fill, key)
                    if checked is not None:
                        out["pointers"].append({**checked, "local": True})
            frames.append(out)
        elif not frames:
            plumbing.append(frame.name() or hex(frame.pc()))
        try:
            frame = frame.older()
        except gdb.error:
            break
    return frames, plumbing


def crash_facts() -> dict[str, Any] | None:
    """What the selected thread (in a core: the one that got the signal) died of, and where: the signal (and
    faulting address), the failed assertion's text, QEMU's first frames with their pointer arguments checked
    against the live graph (and, when not live, whether their memory holds the MALLOC_PERTURB_ fill).
    None when the thread did not die of a crash signal (a live process stopped by gdb's attach)."""
    signal = _siginfo()
    if signal is None:
        return None
    thread = gdb.selected_thread()
    coroutine = hex(_current_coroutine()) if _current_coroutine() else None
    fill = _fill_byte()
    live = _live_objects()
    frames, plumbing = _crash_frames(live, fill, _tcache_key())
    aborted = signal["number"] == 6
    return {"signal": signal, "assertion": _assertion() if aborted else None,
            "error_abort": _error_abort() if aborted else None,
            "thread": thread.num if thread is not None else None,
            "lwp": thread.ptid[1] if thread is not None else None, "coroutine": coroutine,
            "fill": fill, "frames": frames, "plumbing": plumbing[:MAX_SCANNED_FRAMES]}


# Hang facts: who runs where, who holds what, who waits for what -------------------------------------------
