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
    hang_facts(state, coroutines)
    return state


# Hang facts: who runs where, who holds what, who waits for what -------------------------------------------

MAX_THREAD_FRAMES = 40
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
    for entry in state.get("threads", []):
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
                                  "backtrace": [] if not int(co) or _addr(co) in running else coroutines.backtrace(co)}
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
        try:
            document = block_state()
        except (gdb.error, gdb.GdbError) as exc:
            document = {"error": str(exc)}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1)


BlockStateCommand()
