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
    """While `registers` is set, the thread's innermost frame seems to have been called by that coroutine."""

    def __init__(self) -> None:
        super().__init__("iotests-run coroutine")
        self.registers: dict[str, int] | None = None

    def __call__(self, pending_frame: gdb.PendingFrame) -> gdb.UnwindInfo | None:
        pending = pending_frame
        if self.registers is None or pending.level() != 0:
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

    def backtrace(self, co: Any) -> list[dict[str, Any]]:
        """Where a parked coroutine is: its frames from the switch that parked it outwards."""
        address = int(co)
        if address in self.cache:
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
            gdb.invalidate_cached_frames()
            frame = gdb.newest_frame().older()
            while frame is not None and len(frames) < MAX_FRAMES:
                frames.append(_frame(frame))
                if frame.name() == "coroutine_trampoline":
                    break
                frame = frame.older()
        except gdb.error as exc:
            frames.append({"error": str(exc)})
        finally:
            _UNWINDER.registers = None
            gdb.invalidate_cached_frames()
        self.cache[address] = frames
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
    return state


class BlockStateCommand(gdb.Command):
    """iotests-block-state FILE: write QEMU's block-layer state as JSON into FILE."""

    def __init__(self) -> None:
        super().__init__("iotests-block-state", gdb.COMMAND_DATA)

    def invoke(self, argument: str, from_tty: bool) -> None:
        path = argument.strip()
        try:
            document = block_state()
        except (gdb.error, gdb.GdbError) as exc:
            document = {"error": str(exc)}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1)


BlockStateCommand()
