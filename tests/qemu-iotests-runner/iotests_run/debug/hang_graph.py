"""The wait-for graph of a stuck QEMU (debug/hang.py explains it): the walker's document indexed by what
waits for what. Threads wait for AioContext locks and other QemuMutexes (their holders named by LWP) or poll
a context; coroutines wait for requests, CoMutex holders and mirror operations. Pure: crafted documents
test it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Frames that only say "waiting" and never why: skipped when naming where a thread polls or waits.
PLUMBING = {"aio_poll", "aio_wait_kick", "qemu_poll_ns", "ppoll", "__ppoll", "fdmon_poll_wait", "poll",
            "qemu_coroutine_switch", "qemu_coroutine_yield", "qemu_coroutine_enter", "qemu_aio_coroutine_enter",
            "aio_co_enter", "aio_co_wake", "bdrv_poll_co", "qemu_rec_mutex_lock_impl", "qemu_mutex_lock_impl",
            "aio_context_acquire", "qemu_co_queue_wait_impl", "qemu_co_mutex_lock_slowpath",
            "qemu_co_mutex_lock", "qemu_co_queue_wait", "bdrv_wait_serialising_requests_locked",
            "bdrv_wait_serialising_requests", "bql_lock_impl", "qemu_mutex_lock_iothread_impl", "job_lock"}
# The big QEMU lock's variable: `bql` from 8.2 on, `qemu_global_mutex` before.
BQL_NAMES = {"bql", "qemu_global_mutex"}
LIBC_PREFIXES = ("__", "pthread_", "futex", "syscall", "epoll_", "ppoll", "poll", "sigtimedwait", "sigwait")
LIBC_NAMES = {"memcpy", "memmove", "memset", "memcmp", "strlen", "malloc", "free", "calloc", "realloc", "read",
              "write", "pread64", "pwrite64", "preadv64", "pwritev64", "fdatasync", "fsync", "ioctl", "raise",
              "abort", "clone", "clone3", "start_thread", "g_main_context_iteration", "g_poll"}
MAX_CALLERS = 3
# Event loops whose aio_poll is a thread idling, not waiting for something in particular.
IDLE_LOOPS = {"iothread_run", "main_loop_wait", "os_host_main_loop_wait", "qemu_main_loop", "command_loop",
              "qemu_thread_start"}
# Where a thread blocked on a QemuRecMutex sits when aio_context_acquire itself was inlined.
LOCK_FUNCTIONS = {"qemu_rec_mutex_lock_impl", "qemu_mutex_lock_impl", "pthread_mutex_lock", "___pthread_mutex_lock",
                  "__pthread_mutex_lock"}


def dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def qemu_frames(frames: Iterable[dict[str, Any]]) -> list[str]:
    """Function names of frames that are QEMU's own and say something (no libc, no waiting plumbing)."""
    names = [str(f.get("function") or "") for f in frames if isinstance(f, dict)]
    kept = [n for n in names if n and n not in PLUMBING and n not in LIBC_NAMES and not n.startswith(LIBC_PREFIXES)]
    return [n for i, n in enumerate(kept) if i == 0 or kept[i - 1] != n]  # an inlined frame shows twice


def _where(frames: list[dict[str, Any]], after: int) -> str:
    """Where a thread waits: the first informative frame above index `after`, and a few of its callers."""
    names = qemu_frames(frames[after + 1:])
    if not names:
        return "?"
    return names[0] + "".join(f" <- {n}" for n in names[1:1 + MAX_CALLERS])


class Graph:
    """The document indexed: names of contexts, nodes, threads, and what each coroutine is."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.threads = dicts(state.get("threads"))
        self.contexts = {c.get("address"): c for c in dicts(state.get("contexts"))}
        self.nodes = dicts(state.get("nodes"))
        self.jobs = dicts(state.get("jobs"))
        self.main = state.get("main_aio_context")
        self.by_lwp = {t.get("lwp"): t for t in self.threads if isinstance(t.get("lwp"), int)}
        self.node_names = {n.get("address"): self.node_label(n) for n in self.nodes}
        # 10.x's QemuMutexes inside nodes and backends, by address: a thread blocked on one names it
        self.mutex_names = {n["reqs_lock_address"]: f"the reqs_lock of {self.node_label(n)}" for n in self.nodes
                            if n.get("reqs_lock_address")}
        for blk in dicts(state.get("backends")):
            if blk.get("queued_requests_lock"):
                name = f'backend "{blk["name"]}"' if blk.get("name") else f"backend {blk.get('address')}"
                self.mutex_names[blk["queued_requests_lock"]] = f"the queued_requests_lock of {name}"
        self.coroutine_names: dict[Any, str] = {}
        self.waits: dict[Any, list[tuple[Any, str]]] = {}  # coroutine -> [(coroutine it waits for, how)]
        self._coroutines()

    # names -----------------------------------------------------------------------------------------
    def node_label(self, node: dict[str, Any]) -> str:
        name = node.get("node_name")
        return f'node "{name}"' if name else f"node {node.get('address')}"

    def context_name(self, address: Any) -> str:
        if address is not None and address == self.main:
            return "the main context"
        ctx = self.contexts.get(address)
        if ctx and ctx.get("name") and not str(ctx["name"]).startswith("context@"):
            return f"AioContext {ctx['name']}"
        return f"AioContext {address}"

    def thread_name(self, thread: dict[str, Any]) -> str:
        return f"thread {thread.get('num')} ({thread.get('label') or thread.get('name') or '?'})"

    # coroutine wait-for edges --------------------------------------------------------------------
    def _coroutines(self) -> None:
        requests: dict[Any, tuple[dict[str, Any], dict[str, Any]]] = {}
        for node in self.nodes:
            for req in dicts(node.get("requests")):
                requests[req.get("address")] = (node, req)
                if req.get("co"):
                    self.coroutine_names[req["co"]] = (f"request {req.get('type')} {req.get('offset')}+"
                                                       f"{req.get('bytes')} on {self.node_label(node)}")
        for node in self.nodes:
            for req in dicts(node.get("requests")):
                other = requests.get(req.get("waiting_for"))
                if req.get("co") and other and other[1].get("co"):
                    self.waits.setdefault(req["co"], []).append((other[1]["co"], "waits for"))
            mutex = node.get("reqs_lock")
            if isinstance(mutex, dict) and mutex.get("holder"):
                for waiter in dicts(mutex.get("waiters")):
                    if waiter.get("co"):
                        self.waits.setdefault(waiter["co"], []).append(
                            (mutex["holder"], f"waits for the reqs_lock of {self.node_label(node)} held by"))
        for job in self.jobs:
            co = (job.get("coroutine") or {}).get("co") if isinstance(job.get("coroutine"), dict) else None
            if co:
                self.coroutine_names.setdefault(co, f"job {job.get('id')}'s coroutine")
            ops = {op.get("address"): op for op in dicts(job.get("ops_in_flight"))}
            for op in ops.values():
                label = f"mirror op {op.get('offset')}+{op.get('bytes')} of job {job.get('id')}"
                if op.get("co"):
                    self.coroutine_names.setdefault(op["co"], label)
                target = ops.get(op.get("waiting_for_op"))
                if op.get("co") and target and target.get("co"):
                    self.waits.setdefault(op["co"], []).append((target["co"], "waits for"))
                for waiter in dicts(op.get("waiters")):
                    if waiter.get("co") and op.get("co"):
                        self.waits.setdefault(waiter["co"], []).append((op["co"], "waits for"))

    def co_name(self, co: Any) -> str:
        return self.coroutine_names.get(co, f"coroutine {co}")

    # threads -------------------------------------------------------------------------------------
    def lock_waited(self, thread: dict[str, Any]) -> tuple[Any, int] | None:
        """(AioContext address, frame index) when the thread is blocked in aio_context_acquire, or in a mutex
        lock function whose `mutex` argument is a context's lock (aio_context_acquire inlined)."""
        locks = {c["lock"].get("address"): address for address, c in self.contexts.items()
                 if isinstance(c.get("lock"), dict) and c["lock"].get("address")}
        for i, frame in enumerate(dicts(thread.get("frames"))[:12]):
            args: dict[str, Any] = frame["args"] if isinstance(frame.get("args"), dict) else {}
            if frame.get("function") == "aio_context_acquire":
                return args.get("ctx"), i
            if frame.get("function") in LOCK_FUNCTIONS and args.get("mutex") in locks:
                return locks[args["mutex"]], i
        return None

    def mutex_waited(self, thread: dict[str, Any]) -> dict[str, Any] | None:
        """The QemuMutex the thread is blocked on (the walker's waits_for_mutex), unless it is an AioContext's lock
        (lock_waited tells those)."""
        mutex = thread.get("waits_for_mutex")
        if not isinstance(mutex, dict) or self.lock_waited(thread) is not None:
            return None
        return mutex

    def mutex_name(self, mutex: dict[str, Any]) -> str:
        name = mutex.get("name")
        if name in BQL_NAMES:
            return f"the BQL ({name})"
        if not name and mutex.get("address") in self.mutex_names:
            return self.mutex_names[mutex["address"]]
        return f"mutex {name}" if name else f"mutex {mutex.get('address')}"

    def mutex_where(self, thread: dict[str, Any], mutex: dict[str, Any]) -> str:
        frame = mutex.get("frame")
        return _where(dicts(thread.get("frames")), frame if isinstance(frame, int) else 0)

    def waiting_where(self, thread: dict[str, Any]) -> str:
        """Where a thread blocked on a context's lock is: aio_context_acquire and the callers above it."""
        waited = self.lock_waited(thread)
        frames = dicts(thread.get("frames"))
        if waited is None:
            return "?"
        callers = qemu_frames(frames[waited[1] + 1:])
        if frames[waited[1]].get("function") == "aio_context_acquire":
            callers = [n for n in callers if n != "aio_context_acquire"]
        return "aio_context_acquire" + (f", from {' <- '.join(callers[:MAX_CALLERS])}" if callers else "")

    def polled(self, thread: dict[str, Any]) -> tuple[Any, int] | None:
        """(AioContext address, frame index) when the thread is in aio_poll (blocked waiting for events)."""
        for i, frame in enumerate(dicts(thread.get("frames"))[:12]):
            if frame.get("function") == "aio_poll":
                return (frame.get("args") or {}).get("ctx"), i
        return None

    def polled_for(self, frames: list[dict[str, Any]], after: int) -> str:
        """ for node "x": the node the polling function works on (its `bs` argument), said to be unlisted when
        it is not in all_bdrv_states (a node being deleted is taken off that list before it is closed)."""
        for frame in frames[after + 1:after + 1 + 2 * MAX_CALLERS]:
            args = frame.get("args") if isinstance(frame.get("args"), dict) else {}
            bs = args.get("bs") if isinstance(args, dict) else None
            if bs:
                name = self.node_names.get(bs)
                return f" for {name}" if name else f" for node {bs} (not in all_bdrv_states: being deleted?)"
        return ""

    def held(self, thread: dict[str, Any]) -> list[Any]:
        """The contexts whose lock (7.2) this thread holds."""
        return [address for address, ctx in self.contexts.items()
                if isinstance(ctx.get("lock"), dict) and ctx["lock"].get("owner_lwp")
                and ctx["lock"]["owner_lwp"] == thread.get("lwp") and (ctx["lock"].get("count") or 0) > 0]

    def doing(self, thread: dict[str, Any]) -> str:
        """What a thread is doing, as a clause: 'polls the main context in X <- Y' or 'is in X <- Y'."""
        frames = dicts(thread.get("frames"))
        waited = self.lock_waited(thread)
        if waited is not None:
            return f"waits for the lock of {self.context_name(waited[0])} in {self.waiting_where(thread)}"
        mutex = self.mutex_waited(thread)
        if mutex is not None:
            holder = self.by_lwp.get(mutex.get("owner_lwp"))
            held = f" (held by {self.thread_name(holder)})" if holder is not None and holder is not thread else ""
            return f"waits for {self.mutex_name(mutex)}{held} in {self.mutex_where(thread, mutex)}"
        polled = self.polled(thread)
        if polled is not None:
            target = self.polled_for(frames, polled[1])
            return f"polls {self.context_name(polled[0])} in {_where(frames, polled[1])}{target}"
        names = qemu_frames(frames)
        return f"is in {' <- '.join(names[:1 + MAX_CALLERS])}" if names else "is idle"
