"""A hang's facts: threads named, AioContexts with lock owners and pending work, CoMutexes, jobs'
coroutines and mirror ops (`hang_facts`). Runs inside gdb (block_state.py)."""

from __future__ import annotations

from typing import Any

import gdb

from iotests_run.debug.gdbscripts.walker_base import (
    Coroutines,
    _addr,
    _fields,
    _frame,
    _get,
    _int,
    _items,
    _static,
    _string,
)
from iotests_run.debug.gdbscripts.walker_qom import iothread_ids

MAX_THREAD_FRAMES = 40
MAX_THREADS_WALKED = 64  # threads whose own stack is read (a QEMU with hundreds of workers stays bounded)
MAX_ARGS = 6
MAX_CONTEXTS = 64
MAX_QUEUE = 64  # coroutines listed per CoQueue, CoMutex or context list
BDRV_O_RDWR, BDRV_O_INACTIVE = 0x0002, 0x0800
BH_PENDING, BH_SCHEDULED, BH_DELETED = 1, 2, 4
# QEMU's lock functions and the type of their `mutex` argument (its holder is read from the pthread mutex inside).
MUTEX_LOCK_FUNCTIONS = {"qemu_mutex_lock_impl": "QemuMutex", "qemu_rec_mutex_lock_impl": "QemuRecMutex"}
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
    iothreads = iothread_ids()
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
            waited = _mutex_waited(frames)
            if waited is not None:
                entry["waits_for_mutex"] = waited
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


def _pthread_owner(mutex: Any) -> tuple[int | None, int | None]:
    """(holder's LWP, recursion count) of a QemuRecMutex or QemuMutex: glibc keeps the holder's LWP in the
    pthread mutex it wraps (0: free)."""
    inner = mutex
    for name in ("m", "lock", "__data"):  # QemuRecMutex.m (QemuMutex) .lock (pthread_mutex_t) .__data
        field = _get(inner, name)
        if field is not None:  # a QemuMutex has no .m
            inner = field
    return _int(_get(inner, "__owner")), _int(_get(inner, "__count"))


def _lock_owner(ctx: Any) -> dict[str, Any] | None:
    """7.2's AioContext lock: a QemuRecMutex over a recursive pthread mutex."""
    lock = _get(ctx, "lock")
    if lock is None:
        return None
    owner, count = _pthread_owner(lock)
    if owner is None:
        return None
    try:  # what a thread blocked on it shows as its lock function's `mutex` argument
        address = hex(int(lock.address))
    except (gdb.error, TypeError):
        address = None
    return {"owner_lwp": owner, "count": count, "address": address}


def _mutex_waited(frames: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The QemuMutex (or QemuRecMutex) a thread is blocked on, from its lock function's `mutex` argument: its
    address, its name when it is a variable (`bql`, `qemu_global_mutex`, `job_mutex`), and its holder's LWP."""
    for i, entry in enumerate(frames[:12]):
        kind = MUTEX_LOCK_FUNCTIONS.get(str(entry.get("function")))
        address = entry.get("args", {}).get("mutex") if kind else None
        if kind is None or address is None:
            continue
        mutex = gdb.Value(int(address, 16)).cast(gdb.lookup_type(kind).pointer()).dereference()
        owner, count = _pthread_owner(mutex)
        return {"address": address, "name": _variable(int(address, 16)), "owner_lwp": owner, "count": count,
                "frame": i}
    return None


def _variable(address: int) -> str | None:
    """The static variable at an address (`bql`, or `pool+64` inside one); None on the heap."""
    try:
        text = gdb.execute(f"info symbol {address}", to_string=True).strip()
    except (gdb.error, RuntimeError):
        return None
    if not text or text.startswith("No symbol"):
        return None
    words = text.split()
    return f"{words[0]}+{words[2]}" if len(words) > 2 and words[1] == "+" else words[0]


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
    graph = _get(ctx, "bdrv_graph")  # 10.x: the context's share of the graph lock's readers
    if graph is not None and int(graph):
        entry["graph_readers"] = _int(graph.dereference()["reader_count"])
    return entry


def _graph_lock(coroutines: Coroutines) -> dict[str, Any] | None:
    """10.x's graph lock (block/graph-lock.c): whether a writer holds it, the readers counted for contexts that
    are gone, and the coroutines queued to read until the writer is done; None before 8.0."""
    has_writer = _static("has_writer")
    queue = _static("reader_queue")
    if has_writer is None or queue is None:
        return None
    return {"has_writer": _int(has_writer), "orphaned_readers": _int(_static("orphaned_reader_count")),
            "queued_readers": _coroutine_list(_get(queue, "entries"), "co_queue_next", coroutines)}


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
            elif lock is not None:  # 10.x: a QemuMutex, named when a thread waits for it (waits_for_mutex)
                node["reqs_lock_address"] = hex(int(lock.address))
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
        graph_lock = _graph_lock(coroutines)
        if graph_lock is not None:
            state["graph_lock"] = graph_lock
    except (gdb.error, RuntimeError) as exc:
        state.setdefault("hang_facts_errors", []).append(str(exc))
