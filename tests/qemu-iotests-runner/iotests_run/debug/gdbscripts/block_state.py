"""gdb command `iotests-block-state FILE`: QEMU's block-layer state read from memory, as JSON in FILE.

Loaded into gdb (`-x` or `source`) attached to a QEMU process or opened on a core. It reads
memory only and calls no function of the process: a deadlocked process may never return from
one, and a core has no process. What it reads (facts of QEMU's block.c, block-backend.c, io.c,
job.c, graph-lock.c and coroutine-ucontext.c, 7.2 and 10.x):

- every BlockDriverState (all_bdrv_states), its children and their permissions, its tracked
  requests with the backtrace of the coroutine that issued each one;
- every BlockBackend (block_backends) and every job (jobs);
- bdrv_drain_all_count and, on 10.x, the graph lock's writer flag;
- each thread's current coroutine and the chain of coroutines that called it.

A parked coroutine's registers are in its sigjmp_buf, rbp/rsp/pc mangled by glibc (rotate left
0x11 after xor with the pointer guard at $fs_base + 0x30). To unwind one, an unwinder hands
gdb those registers as the caller of the thread's innermost frame, with a frame id below the
coroutine's stack so that gdb's "inner frame" check holds; gdb's own DWARF unwinder does the rest.
Everything is bounded: nodes, requests, frames and list lengths.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import gdb
from gdb.unwinder import Unwinder, register_unwinder

MAX_NODES = 1000
MAX_LIST = 10_000  # links followed in any one list (a corrupt list must not loop forever)
MAX_REQUESTS = 50  # per node
MAX_UNWINDS = 200  # coroutine backtraces in all
MAX_FRAMES = 30
MASK = (1 << 64) - 1
# sigjmp_buf's __jmpbuf on x86_64 glibc: rbx, rbp, r12, r13, r14, r15, rsp, pc
JMPBUF_REGISTERS = ("rbx", "rbp", "r12", "r13", "r14", "r15", "rsp", "rip")
MANGLED = {"rbp", "rsp", "rip"}
# Frames that only say "this coroutine yielded".
SWITCH_FRAMES = {"qemu_coroutine_switch", "qemu_coroutine_yield"}


def _fields(value: Any) -> set[str]:
    try:
        return {f.name for f in value.type.strip_typedefs().fields()}
    except (gdb.error, TypeError):
        return set()


def _int(value: Any) -> int | None:
    """An integer field, also through QEMU's wrappers (a struct with one member, e.g. an atomic)."""
    try:
        if value.type.strip_typedefs().code == gdb.TYPE_CODE_STRUCT:
            first = value.type.strip_typedefs().fields()[0].name
            return _int(value[first])
        return int(value)
    except (gdb.error, IndexError, TypeError, ValueError):
        return None


def _get(value: Any, *names: str) -> Any:
    """The first of these fields the type has (names change between QEMU versions), else None."""
    have = _fields(value)
    for name in names:
        if name in have:
            return value[name]
    return None


def _string(value: Any, limit: int = 4096) -> str | None:
    try:
        if value is None or (value.type.strip_typedefs().code == gdb.TYPE_CODE_PTR and int(value) == 0):
            return None
        return str(value.string(errors="replace"))[:limit]  # up to its NUL (an array's too)
    except (gdb.error, UnicodeDecodeError):
        return None


def _addr(value: Any) -> str | None:
    try:
        return None if value is None or int(value) == 0 else hex(int(value))
    except gdb.error:
        return None


def _items(head: Any, link: str) -> list[Any]:
    """The elements of a QLIST, QTAILQ or QSIMPLEQ whose link field is `link`, bounded, loops cut."""
    first = _get(head, "lh_first", "tqh_first", "sqh_first")
    out: list[Any] = []
    seen: set[int] = set()
    element = first
    while element is not None and int(element) != 0 and len(out) < MAX_LIST and int(element) not in seen:
        seen.add(int(element))
        out.append(element)
        entry = element.dereference()[link]
        element = _get(entry, "le_next", "tqe_next", "sqe_next")
    return out


def _static(name: str) -> Any:
    symbol = gdb.lookup_static_symbol(name) or gdb.lookup_global_symbol(name)
    if symbol is None:
        try:
            return gdb.parse_and_eval(name)
        except gdb.error:
            return None
    return symbol.value()


def _enum(value: Any) -> str | None:
    try:
        return str(value)
    except gdb.error:
        return None


# Coroutine backtraces ------------------------------------------------------------------------------

class _FrameId:
    def __init__(self, sp: int, pc: int) -> None:
        word = gdb.lookup_type("unsigned long")
        self.sp = gdb.Value(sp).cast(word)
        self.pc = gdb.Value(pc).cast(word)


class _CoroutineUnwinder(Unwinder):
    """While `registers` is set, the thread's innermost real frame (`level`: gdb's inline-frame unwinder answers
    for inlined frames before any Python unwinder is asked) seems to have been called by that coroutine."""

    def __init__(self) -> None:
        super().__init__("iotests-run coroutine")
        self.registers: dict[str, int] | None = None
        self.level = 0

    def __call__(self, pending_frame: gdb.PendingFrame) -> gdb.UnwindInfo | None:
        pending = pending_frame
        if self.registers is None or pending.level() != self.level:
            return None
        regs = self.registers
        info = pending.create_unwind_info(_FrameId(regs["rsp"] - 256, regs["rip"]))
        word = gdb.lookup_type("unsigned long")
        for name, value in regs.items():
            info.add_saved_register(name, gdb.Value(value).cast(word))
        return info


_UNWINDER = _CoroutineUnwinder()
register_unwinder(None, _UNWINDER, replace=True)


def _ror(value: int, bits: int) -> int:
    return ((value >> bits) | (value << (64 - bits))) & MASK


class Coroutines:
    def __init__(self) -> None:
        self.unwinds = 0
        self.cache: dict[int, list[dict[str, Any]]] = {}
        try:
            fs_base = int(gdb.parse_and_eval("$fs_base"))
            self.guard: int | None = int(gdb.parse_and_eval(f"*(unsigned long *){fs_base + 0x30}")) & MASK
        except gdb.error:
            self.guard = None
        self.context: gdb.Type | None
        try:
            self.context = gdb.lookup_type("CoroutineUContext").pointer()
        except gdb.error:
            self.context = None
        self.running = _running_coroutines()

    def backtrace(self, co: Any) -> list[dict[str, Any]]:
        """Where a parked coroutine is: its frames from the switch that parked it outwards. A coroutine that
        is some thread's current one is running: its jmp_buf is stale, its frames are that thread's."""
        address = int(co)
        if address in self.cache:
            return self.cache[address]
        if address in self.running:
            self.cache[address] = _running_backtrace(self.running[address])
            return self.cache[address]
        if self.guard is None or self.context is None or self.unwinds >= MAX_UNWINDS:
            return []
        self.unwinds += 1
        frames: list[dict[str, Any]] = []
        try:
            buf = co.cast(self.context).dereference()["env"][0]["__jmpbuf"]
            raw = [int(buf[i]) & MASK for i in range(len(JMPBUF_REGISTERS))]
            _UNWINDER.registers = {name: (_ror(v, 0x11) ^ self.guard if name in MANGLED else v)
                                   for name, v in zip(JMPBUF_REGISTERS, raw, strict=True)}
            _UNWINDER.level = _first_real_level()
            gdb.invalidate_cached_frames()
            frame = _frame_at(_UNWINDER.level).older()
            if frame is None or frame.pc() != _UNWINDER.registers["rip"]:
                # gdb did not take the coroutine's registers: what follows would be the thread's own frames
                raise gdb.error("gdb did not unwind from the coroutine's saved registers")
            while frame is not None and len(frames) < MAX_FRAMES:
                frames.append(_frame(frame))
                if frame.name() == "coroutine_trampoline":
                    break
                frame = frame.older()
        except gdb.error as exc:
            frames.append({"error": str(exc)})
        finally:
            _UNWINDER.registers = None
            _UNWINDER.level = 0
            gdb.invalidate_cached_frames()
        self.cache[address] = frames
        return frames


def _first_real_level() -> int:
    """The level of the selected thread's innermost frame that is not inlined into its caller."""
    frame: gdb.Frame | None = gdb.newest_frame()
    while frame is not None and frame.type() == gdb.INLINE_FRAME:
        frame = frame.older()
    return frame.level() if frame is not None else 0


def _frame_at(level: int) -> Any:
    frame = gdb.newest_frame()
    while frame.level() < level:
        older = frame.older()
        if older is None:
            break
        frame = older
    return frame


def _current_coroutine() -> int:
    """The selected thread's current coroutine, 0 when it runs none (its own stack, the "leader", counts as none)."""
    try:
        current = int(gdb.parse_and_eval("co_tls_current"))
    except gdb.error:
        return 0
    try:
        leader = int(gdb.parse_and_eval("&co_tls_leader"))
    except gdb.error:
        leader = 0
    return current if current != leader else 0


def _running_coroutines() -> dict[int, int]:
    """Each thread's current coroutine (address -> thread number): running, not parked."""
    out: dict[int, int] = {}
    selected = gdb.selected_thread()
    try:
        for thread in gdb.selected_inferior().threads():
            try:
                thread.switch()
                current = _current_coroutine()
            except gdb.error:
                continue
            if current:
                out[current] = thread.num
    finally:
        if selected is not None and selected.is_valid():
            selected.switch()
    return out


def _running_backtrace(num: int) -> list[dict[str, Any]]:
    """A running coroutine's frames, unwound from its thread's live registers, up to its trampoline; the
    first frame says on which thread it runs."""
    frames: list[dict[str, Any]] = []
    selected = gdb.selected_thread()
    try:
        thread = next((t for t in gdb.selected_inferior().threads() if t.num == num), None)
        if thread is None:
            return [{"error": f"thread {num} is gone"}]
        thread.switch()
        frame: gdb.Frame | None = gdb.newest_frame()
        while frame is not None and len(frames) < MAX_FRAMES:
            frames.append(_frame(frame))
            if frame.name() == "coroutine_trampoline":
                break
            frame = frame.older()
    except gdb.error as exc:
        frames.append({"error": str(exc)})
    finally:
        if selected is not None and selected.is_valid():
            selected.switch()
    if frames and "error" not in frames[0]:
        frames[0]["running_on_thread"] = num
    return frames


def _frame(frame: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"function": frame.name(), "pc": hex(frame.pc())}
    try:
        sal = frame.find_sal()
        if sal.symtab is not None:
            out["file"], out["line"] = sal.symtab.filename, sal.line
    except gdb.error:
        pass
    return out


# The graph --------------------------------------------------------------------------------------

REQUEST_TYPES = {"BDRV_TRACKED_READ": "read", "BDRV_TRACKED_WRITE": "write", "BDRV_TRACKED_DISCARD": "discard",
                 "BDRV_TRACKED_TRUNCATE": "truncate"}


def _child(child: Any) -> dict[str, Any]:
    c = child.dereference()
    return {"name": _string(c["name"]), "node": _addr(c["bs"]), "role": _int(_get(c, "role")),
            "perm": _int(c["perm"]), "shared_perm": _int(c["shared_perm"]), "frozen": bool(_int(_get(c, "frozen"))),
            "parent_quiesced": _int(_get(c, "parent_quiesce_counter", "quiesced_parent"))}


def _node(bs: Any, coroutines: Coroutines) -> dict[str, Any]:
    b = bs.dereference()
    drv = b["drv"]
    requests = []
    for req in _items(b["tracked_requests"], "list")[:MAX_REQUESTS]:
        r = req.dereference()
        kind = _enum(r["type"]) or "?"
        requests.append({"address": _addr(req), "type": REQUEST_TYPES.get(kind, kind), "offset": _int(r["offset"]),
                         "bytes": _int(r["bytes"]), "co": _addr(r["co"]), "waiting_for": _addr(r["waiting_for"]),
                         "backtrace": coroutines.backtrace(r["co"]) if int(r["co"]) else []})
    return {
        "address": _addr(bs), "node_name": _string(b["node_name"]),
        "driver": _string(drv["format_name"]) if int(drv) else None,
        "filename": _string(b["filename"]), "refcnt": _int(b["refcnt"]),
        "aio_context": _addr(b["aio_context"]), "in_flight": _int(b["in_flight"]),
        "quiesce_counter": _int(b["quiesce_counter"]),
        "children": [_child(c) for c in _items(b["children"], "next")],
        "requests": requests,
    }


def _backend(blk: Any) -> dict[str, Any]:
    b = blk.dereference()
    root = b["root"]
    queued = _get(b, "queued_requests")
    return {"address": _addr(blk), "name": _string(b["name"]),
            "root": _addr(root.dereference()["bs"]) if int(root) else None,
            "device": _addr(b["dev"]), "in_flight": _int(b["in_flight"]),
            "quiesce_counter": _int(_get(b, "quiesce_counter")),
            "queued_requests": len(_items(_get(queued, "entries"), "co_queue_next")) if queued is not None else None}


BLOCK_JOB_TYPES = {"JOB_TYPE_COMMIT", "JOB_TYPE_STREAM", "JOB_TYPE_MIRROR", "JOB_TYPE_BACKUP"}


def _job(job: Any) -> dict[str, Any]:
    j = job.dereference()
    kind = _enum(j["driver"].dereference()["job_type"]) if int(j["driver"]) else None
    out: dict[str, Any] = {
        "address": _addr(job), "id": _string(j["id"]), "type": (kind or "?").removeprefix("JOB_TYPE_").lower(),
        "status": (_enum(j["status"]) or "?").removeprefix("JOB_STATUS_").lower(),
        "pause_count": _int(j["pause_count"]), "busy": bool(_int(j["busy"])), "paused": bool(_int(j["paused"])),
        "cancelled": bool(_int(j["cancelled"])), "ret": _int(j["ret"]), "nodes": [],
    }
    if kind in BLOCK_JOB_TYPES:
        try:
            entry = job.cast(gdb.lookup_type("BlockJob").pointer()).dereference()["nodes"]
            while int(entry) and len(out["nodes"]) < MAX_LIST:
                child = entry.dereference()["data"].cast(gdb.lookup_type("BdrvChild").pointer())
                out["nodes"].append(_child(child))
                entry = entry.dereference()["next"]
        except gdb.error:
            pass
    return out


def _threads(coroutines: Coroutines) -> list[dict[str, Any]]:
    """Each thread's current coroutine and the chain of coroutines parked under it."""
    out = []
    selected = gdb.selected_thread()
    for thread in sorted(gdb.selected_inferior().threads(), key=lambda t: t.num):
        entry: dict[str, Any] = {"num": thread.num, "name": thread.name, "current": None, "callers": []}
        try:
            thread.switch()
            current = gdb.parse_and_eval("co_tls_current")
            try:  # the thread's own stack counts as its "leader" coroutine once it has entered one
                leader = int(gdb.parse_and_eval("&co_tls_leader"))
            except gdb.error:
                leader = 0
            if int(current) and int(current) != leader:
                entry["current"] = _addr(current)
                caller = current.dereference()["caller"]
                while int(caller) and len(entry["callers"]) < 16:
                    entry["callers"].append({"co": _addr(caller), "backtrace": coroutines.backtrace(caller)})
                    caller = caller.dereference()["caller"]
        except gdb.error as exc:
            entry["error"] = str(exc)
        out.append(entry)
    if selected is not None:
        selected.switch()
    return out


def block_state() -> dict[str, Any]:
    if not gdb.selected_inferior().pid:  # else all_bdrv_states would be read from the program file: "0 nodes"
        raise gdb.GdbError("no process or core to read (gdb could not attach, or did not load the core)")
    states = _static("all_bdrv_states")
    if states is None:
        raise gdb.GdbError("no all_bdrv_states: not a QEMU block-layer program, or no debug info")
    coroutines = Coroutines()
    main_context = _static("qemu_aio_context")
    backends, jobs = _static("block_backends"), _static("jobs")
    drain_all, writer = _static("bdrv_drain_all_count"), _static("has_writer")
    state: dict[str, Any] = {
        "main_aio_context": _addr(main_context),
        "nodes": [_node(bs, coroutines) for bs in _items(states, "bs_list")[:MAX_NODES]],
        "backends": [_backend(b) for b in _items(backends, "link")] if backends is not None else [],
        "jobs": [_job(j) for j in _items(jobs, "job_list")] if jobs is not None else [],
        "drain_all_count": _int(drain_all) if drain_all is not None else None,
        "graph_writer": _int(writer) if writer is not None else None,  # 10.x's graph lock
    }
    state["threads"] = _threads(coroutines)
    state["_coroutines"] = coroutines  # for hang_facts, after the basic document is safely written
    return state


# The crash (a core's, or a process stopped by a crash signal) ---------------------------------------
# Its facts are read first, before the graph is walked: they are cheap and they are what explains it.

CRASH_SIGNALS = {4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 11: "SIGSEGV"}
FAULT_SIGNALS = {4, 7, 8, 11}  # their siginfo carries the faulting address (when si_code > 0: from the CPU)
MAX_SCANNED_FRAMES = 64  # frames looked at for QEMU's own (libc's and glib's abort plumbing comes first)
MAX_CRASH_FRAMES = 8  # QEMU frames whose pointer arguments are checked
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


def _pointer(name: str, value: Any, live: dict[str, dict[int, str]], fill: int | None) -> dict[str, Any] | None:
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


def _is_qemu(frame: Any) -> bool:
    """A frame of the program itself (not of libc, glib or another shared library)."""
    try:
        return frame.name() is not None and gdb.solib_name(frame.pc()) is None
    except (gdb.error, RuntimeError):
        return False


def _crash_frames(live: dict[str, dict[int, str]], fill: int | None) -> tuple[list[dict[str, Any]], list[str]]:
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
            out["pointers"] = [p for p in (_pointer(n, v, live, fill) for n, v in _arguments(frame)) if p]
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
    frames, plumbing = _crash_frames(live, fill)
    return {"signal": signal, "assertion": _assertion() if signal["number"] == 6 else None,
            "thread": thread.num if thread is not None else None,
            "lwp": thread.ptid[1] if thread is not None else None, "coroutine": coroutine,
            "fill": fill, "frames": frames, "plumbing": plumbing[:MAX_SCANNED_FRAMES]}


# Hang facts: who runs where, who holds what, who waits for what -------------------------------------------

MAX_THREAD_FRAMES = 40
MAX_THREADS_WALKED = 64  # threads whose own stack is read (a QEMU with hundreds of workers stays bounded)
MAX_ARGS = 6
MAX_CONTEXTS = 64
MAX_QUEUE = 64  # coroutines listed per CoQueue, CoMutex or context list
MAX_QOM_PROPERTIES = 4096
BDRV_O_RDWR, BDRV_O_INACTIVE = 0x0002, 0x0800
BH_PENDING, BH_SCHEDULED, BH_DELETED = 1, 2, 4
# Frames that tell what kind of thread this is (when it is not the main thread).
WORKER_FRAMES = {"worker_thread": "worker", "call_rcu_thread": "rcu", "kvm_vcpu_thread_fn": "vcpu",
                 "tcg_cpu_thread_fn": "vcpu", "mttcg_cpu_thread_fn": "vcpu", "rr_cpu_thread_fn": "vcpu",
                 "dummy_cpu_thread_fn": "vcpu", "migration_thread": "migration"}


def _pointer_args(frame: Any) -> dict[str, str]:
    """A frame's pointer arguments (bs=0x..., ctx=0x...), which say what a function works on."""
    out: dict[str, str] = {}
    try:
        block = frame.block()
    except (gdb.error, RuntimeError):
        return out
    for symbol in block:
        if len(out) >= MAX_ARGS:
            break
        if not symbol.is_argument:
            continue
        try:
            value = symbol.value(frame)
            if value.type.strip_typedefs().code == gdb.TYPE_CODE_PTR:
                out[symbol.name] = hex(int(value))
        except (gdb.error, RuntimeError, ValueError):
            continue
    return out


def _thread_frames(thread: Any) -> list[dict[str, Any]]:
    """The thread's own stack (innermost first), with each frame's pointer arguments."""
    frames: list[dict[str, Any]] = []
    thread.switch()
    frame: Any = gdb.newest_frame()
    while frame is not None and len(frames) < MAX_THREAD_FRAMES:
        entry = _frame(frame)
        args = _pointer_args(frame)
        if args:
            entry["args"] = args
        frames.append(entry)
        try:
            frame = frame.older()
        except gdb.error:
            break
    return frames


def _iothread_ids() -> dict[int, str]:
    """IOThread object address -> its id (`-object iothread,id=...`), read from the QOM tree's /objects
    container: a GHashTable of ObjectProperty whose child<iothread> properties point at the objects."""
    try:
        base = _static("object_get_root::root")  # object_get_root()'s static Object *root
        container = _child_object(base, "objects") if base is not None and int(base) else None
        if container is None:
            return {}
        return {int(obj): name for name, kind, obj in _qom_children(container) if kind.startswith("child<iothread")}
    except (gdb.error, RuntimeError, ValueError):
        return {}


def _child_object(obj: Any, wanted: str) -> Any:
    for name, kind, child in _qom_children(obj):
        if name == wanted and kind.startswith("child<"):
            return child
    return None


def _qom_children(obj: Any) -> list[tuple[str, str, Any]]:
    """(name, type, opaque) of an Object's properties: glib's GHashTable read by its layout (size, mod, mask,
    nnodes, noccupied, two bit flags, keys, hashes, values), checked as it is read: a slot is used when its
    hash is 2 or more; values are pointers unless the table stores them small (then they are not ours)."""
    table = obj.cast(gdb.lookup_type("Object").pointer()).dereference()["properties"]
    word = gdb.lookup_type("unsigned long").pointer()
    u32 = gdb.lookup_type("unsigned int").pointer()
    base = int(table)
    if not base:
        return []
    size = int(gdb.Value(base).cast(word).dereference())
    flags = int(gdb.Value(base + 24).cast(u32).dereference())
    if size < 8 or size > MAX_QOM_PROPERTIES or size & (size - 1) or not flags & 2:  # have_big_values
        return []
    keys, hashes, values = (int(gdb.Value(base + off).cast(word).dereference()) for off in (32, 40, 48))
    prop_type = gdb.lookup_type("ObjectProperty").pointer()
    out = []
    for i in range(size):
        if int(gdb.Value(hashes + 4 * i).cast(u32).dereference()) < 2:
            continue
        prop = gdb.Value(int(gdb.Value(values + 8 * i).cast(word).dereference())).cast(prop_type).dereference()
        name, kind = _string(prop["name"], 128), _string(prop["type"], 128)
        if name is not None and kind is not None:
            out.append((name, kind, prop["opaque"]))
    del keys
    return out


def _thread_label(frames: list[dict[str, Any]], lwp: int, pid: int, iothreads: dict[int, str],
                  iothread_struct: Any) -> tuple[str, str | None]:
    """("main" | IOThread id | "worker" | ..., the AioContext it runs, if an IOThread's)."""
    if lwp == pid:
        return "main", None
    for entry in frames:
        if entry.get("function") == "iothread_run" and iothread_struct is not None:
            opaque = entry.get("args", {}).get("opaque")
            if opaque is None:
                continue
            address = int(opaque, 16)
            context = _addr(gdb.Value(address).cast(iothread_struct).dereference()["ctx"])
            return iothreads.get(address, f"iothread@{hex(address)}"), context
        if entry.get("function") in WORKER_FRAMES:
            return WORKER_FRAMES[str(entry["function"])], None
    return "other", None


def _threads_named(state: dict[str, Any]) -> None:
    """Each thread of state["threads"] gets its LWP, a name (main, the IOThread's id, worker...), the context
    an IOThread runs and its own stack with pointer arguments."""
    inferior = gdb.selected_inferior()
    selected = gdb.selected_thread()
    iothreads = _iothread_ids()
    try:
        iothread_struct: Any = gdb.lookup_type("IOThread").pointer()
    except gdb.error:
        iothread_struct = None
    by_num = {t.num: t for t in inferior.threads()}
    for entry in state.get("threads", [])[:MAX_THREADS_WALKED]:
        thread = by_num.get(entry.get("num"))
        if thread is None:
            continue
        lwp = thread.ptid[1] or thread.ptid[2]
        entry["lwp"] = lwp
        try:
            frames = _thread_frames(thread)
            entry["frames"] = frames
            entry["label"], context = _thread_label(frames, lwp, inferior.pid, iothreads, iothread_struct)
            if context:
                entry["runs_context"] = context
        except (gdb.error, RuntimeError) as exc:
            entry["frames_error"] = str(exc)
            entry["label"] = "main" if lwp == inferior.pid else "other"
    if selected is not None:
        selected.switch()


def _coroutine_list(head: Any, link: str, coroutines: Coroutines, unwind: bool = True) -> list[dict[str, Any]]:
    out = []
    for co in _items(head, link)[:MAX_QUEUE]:
        out.append({"co": _addr(co), "backtrace": coroutines.backtrace(co) if unwind else []})
    return out


def _lock_owner(ctx: Any) -> dict[str, Any] | None:
    """7.2's AioContext lock: a QemuRecMutex over a recursive pthread mutex; glibc keeps the holder's LWP."""
    lock = _get(ctx, "lock")
    if lock is None:
        return None
    inner = lock
    for name in ("m", "lock", "__data"):  # QemuRecMutex.m (QemuMutex) .lock (pthread_mutex_t) .__data
        field = _get(inner, name)
        if field is None:
            break
        inner = field
    owner, count = _int(_get(inner, "__owner")), _int(_get(inner, "__count"))
    if owner is None:
        return None
    try:  # what a thread blocked on it shows as its lock function's `mutex` argument
        address = hex(int(lock.address))
    except (gdb.error, TypeError):
        address = None
    return {"owner_lwp": owner, "count": count, "address": address}


def _bottom_halves(ctx: Any) -> list[dict[str, Any]]:
    out = []
    for bh in _items(_get(ctx, "bh_list"), "next")[:MAX_QUEUE]:
        b = bh.dereference()
        flags = _int(_get(b, "flags")) or 0
        if flags & BH_DELETED or not flags & (BH_PENDING | BH_SCHEDULED):
            continue
        callback = _symbol(b["cb"])
        out.append({"address": _addr(bh), "callback": callback, "name": _string(_get(b, "name"), 128),
                    "opaque": _addr(b["opaque"]), "flags": flags})
    return out


def _symbol(pointer: Any) -> str | None:
    try:
        block = gdb.block_for_pc(int(pointer))
        if block is not None and block.function is not None:
            return str(block.function.name)
        text = gdb.execute(f"info symbol {int(pointer)}", to_string=True)
        return text.split()[0] if text and not text.startswith("No symbol") else hex(int(pointer))
    except (gdb.error, RuntimeError):
        return None


def _context(address: int, name: str, coroutines: Coroutines) -> dict[str, Any]:
    ctx = gdb.Value(address).cast(gdb.lookup_type("AioContext").pointer()).dereference()
    entry: dict[str, Any] = {"address": hex(address), "name": name,
                             "scheduled": _coroutine_list(_get(ctx, "scheduled_coroutines"), "co_scheduled_next",
                                                          coroutines),
                             "bottom_halves": _bottom_halves(ctx)}
    lock = _lock_owner(ctx)
    if lock is not None:
        entry["lock"] = lock
    return entry


def _contexts(state: dict[str, Any], coroutines: Coroutines) -> list[dict[str, Any]]:
    """The main context, each IOThread's and every node's: named, with its lock's holder (7.2) and what it
    still has to run (scheduled coroutines, pending bottom halves)."""
    names: dict[int, str] = {}
    if state.get("main_aio_context"):
        names[int(state["main_aio_context"], 16)] = "main"
    for thread in state.get("threads", []):
        if thread.get("runs_context"):
            names.setdefault(int(thread["runs_context"], 16), str(thread.get("label")))
    for node in state.get("nodes", []):
        if node.get("aio_context"):
            address = int(node["aio_context"], 16)
            names.setdefault(address, f"context@{hex(address)}")
    out = []
    for address, name in list(names.items())[:MAX_CONTEXTS]:
        try:
            out.append(_context(address, name, coroutines))
        except (gdb.error, RuntimeError) as exc:
            out.append({"address": hex(address), "name": name, "error": str(exc)})
    return out


def _comutex(mutex: Any, coroutines: Coroutines) -> dict[str, Any] | None:
    """A CoMutex held or waited for: its holder and the coroutines queued on it."""
    locked = _int(_get(mutex, "locked"))
    if not locked:
        return None
    waiters = []
    for head in ("to_pop", "from_push"):
        for record in _items(_get(mutex, head), "next")[:MAX_QUEUE]:
            co = record.dereference()["co"]
            waiters.append({"co": _addr(co), "backtrace": coroutines.backtrace(co)})
    holder = _get(mutex, "holder")
    return {"locked": locked, "holder": _addr(holder) if holder is not None else None,
            "holder_backtrace": coroutines.backtrace(holder) if holder is not None and int(holder) else [],
            "waiters": waiters}


def _node_hang_facts(state: dict[str, Any], coroutines: Coroutines) -> None:
    """Per node: its open flags, the count of its tracked requests, its reqs_lock (a CoMutex on 7.2) and the
    coroutines queued for a flush."""
    node_type = gdb.lookup_type("BlockDriverState").pointer()
    for node in state.get("nodes", []):
        try:
            b = gdb.Value(int(node["address"], 16)).cast(node_type).dereference()
            flags = _int(b["open_flags"])
            node["open_flags"] = flags
            node["read_only"] = bool(flags is not None and not flags & BDRV_O_RDWR)
            node["inactive"] = bool(flags is not None and flags & BDRV_O_INACTIVE)
            node["tracked"] = len(_items(b["tracked_requests"], "list"))
            lock = _get(b, "reqs_lock")
            if lock is not None and "locked" in _fields(lock):
                held = _comutex(lock, coroutines)
                if held is not None:
                    node["reqs_lock"] = held
            flushes = _get(b, "flush_queue")
            if flushes is not None:
                waiting = _coroutine_list(_get(flushes, "entries"), "co_queue_next", coroutines)
                if waiting:
                    node["flush_waiters"] = waiting
        except (gdb.error, RuntimeError, KeyError, ValueError) as exc:
            node["hang_facts_error"] = str(exc)


def _mirror_ops(job: Any, coroutines: Coroutines) -> list[dict[str, Any]]:
    """A mirror job's operations in flight: what each waits for and who is parked waiting for it."""
    mirror = job.cast(gdb.lookup_type("MirrorBlockJob").pointer()).dereference()
    out = []
    for op in _items(mirror["ops_in_flight"], "next")[:MAX_QUEUE]:
        o = op.dereference()
        co = _get(o, "co")
        out.append({"address": _addr(op), "offset": _int(o["offset"]), "bytes": _int(o["bytes"]),
                    "pseudo": bool(_int(_get(o, "is_pseudo_op"))),
                    "active_write": bool(_int(_get(o, "is_active_write"))),
                    "in_flight": bool(_int(_get(o, "is_in_flight"))), "co": _addr(co) if co is not None else None,
                    "waiting_for_op": _addr(_get(o, "waiting_for_op")),
                    "waiters": _coroutine_list(_get(o["waiting_requests"], "entries"), "co_queue_next", coroutines)})
    return out


def _job_hang_facts(state: dict[str, Any], coroutines: Coroutines) -> None:
    """Per job: its own coroutine unwound (unless a thread is running it), its flags, a mirror's operations."""
    running = {t.get("current") for t in state.get("threads", []) if t.get("current")}
    job_type = gdb.lookup_type("Job").pointer()
    for entry in state.get("jobs", []):
        try:
            job = gdb.Value(int(entry["address"], 16)).cast(job_type)
            j = job.dereference()
            co = j["co"]
            entry["coroutine"] = {"co": _addr(co), "running": _addr(co) in running,
                                  # a running one is unwound from its thread's registers (Coroutines.backtrace)
                                  "backtrace": coroutines.backtrace(co) if int(co) else []}
            entry["flags"] = {name: _int(_get(j, name)) for name in
                              ("refcnt", "pause_count", "busy", "paused", "user_paused", "cancelled", "force_cancel",
                               "deferred_to_main_loop", "auto_finalize", "auto_dismiss")
                              if _get(j, name) is not None}
            entry["aio_context"] = _addr(_get(j, "aio_context"))
            if entry.get("type") == "mirror":
                entry["ops_in_flight"] = _mirror_ops(job, coroutines)
        except (gdb.error, RuntimeError, KeyError, ValueError) as exc:
            entry["hang_facts_error"] = str(exc)


def hang_facts(state: dict[str, Any], coroutines: Coroutines) -> None:
    """What a hang's explanation needs, added to the document (new keys only)."""
    for step in (_threads_named, lambda s: _node_hang_facts(s, coroutines), lambda s: _job_hang_facts(s, coroutines)):
        try:
            step(state)
        except (gdb.error, RuntimeError) as exc:
            state.setdefault("hang_facts_errors", []).append(str(exc))
    try:
        state["contexts"] = _contexts(state, coroutines)
    except (gdb.error, RuntimeError) as exc:
        state.setdefault("hang_facts_errors", []).append(str(exc))


class BlockStateCommand(gdb.Command):
    """iotests-block-state FILE: write QEMU's block-layer state as JSON into FILE."""

    def __init__(self) -> None:
        super().__init__("iotests-block-state", gdb.COMMAND_DATA)

    def invoke(self, argument: str, from_tty: bool) -> None:
        path = argument.strip()
        facts = _crash_facts_first(path)
        try:
            document = block_state()
        except (gdb.error, gdb.GdbError) as exc:
            document = {"error": str(exc)}
        if facts is not None:
            document["crash"] = facts
        coroutines = document.pop("_coroutines", None)
        _write_json(path, document)  # the graph first: kept if gdb is stopped during the hang facts
        if coroutines is not None:
            document["hang_facts"] = "incomplete"
            hang_facts(document, coroutines)
            document["hang_facts"] = "complete"
            _write_json(path, document)


def _crash_facts_first(path: str) -> dict[str, Any] | None:
    """The crash's facts, written at once: should gdb be stopped during the (slower) walk, they are kept."""
    if not gdb.selected_inferior().pid:
        return None
    try:
        facts = crash_facts()
    except (gdb.error, gdb.GdbError, RuntimeError) as exc:
        facts = {"error": str(exc)}
    if facts is not None:
        _write_json(path, {"error": "gdb stopped before the block-layer walk ended", "crash": facts})
    return facts


def _write_json(path: str, document: dict[str, Any]) -> None:
    """Written whole or not at all (gdb may be stopped at any moment by the runner's time budget)."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1)
    os.replace(partial, path)


BlockStateCommand()
