"""Why a QEMU process is stuck, from the walker's document (gdbscripts/block_state.py): 1-3 lines.

A pure function of the document, so that crafted documents test it. It builds a wait-for graph:

- threads: one blocked in aio_context_acquire waits for that AioContext's lock, which the thread whose
  LWP the lock's pthread mutex names holds (7.2); one in aio_poll polls a context from some function
  (a drain, AIO_WAIT_WHILE, a job's synchronous completion), waiting for work that context must do;
- coroutines: a tracked request's coroutine waits for the request it is `waiting_for` (serialising
  requests); one parked on a CoMutex waits for its holder; one parked in a mirror operation's queue
  waits for that operation, which may itself wait for another (`waiting_for_op`);

and says first what closes a cycle ("deadlock: ..."), else which node's `in_flight` exceeds its
tracked requests (work that is no request: a scheduled coroutine, a bottom half, or a leak), else
who polls and what is pending. The first line stands on its own; the next ones add what a context
still has scheduled and what the jobs' own coroutines are doing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Frames that only say "waiting" and never why: skipped when naming where a thread polls or waits.
PLUMBING = {"aio_poll", "aio_wait_kick", "qemu_poll_ns", "ppoll", "__ppoll", "fdmon_poll_wait", "poll",
            "qemu_coroutine_switch", "qemu_coroutine_yield", "qemu_coroutine_enter", "qemu_aio_coroutine_enter",
            "aio_co_enter", "aio_co_wake", "bdrv_poll_co", "qemu_rec_mutex_lock_impl", "qemu_mutex_lock_impl",
            "aio_context_acquire", "qemu_co_queue_wait_impl", "qemu_co_mutex_lock_slowpath",
            "qemu_co_mutex_lock", "qemu_co_queue_wait", "bdrv_wait_serialising_requests_locked",
            "bdrv_wait_serialising_requests"}
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
MAX_LINE = 400


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _qemu_frames(frames: Iterable[dict[str, Any]]) -> list[str]:
    """Function names of frames that are QEMU's own and say something (no libc, no waiting plumbing)."""
    names = [str(f.get("function") or "") for f in frames if isinstance(f, dict)]
    kept = [n for n in names if n and n not in PLUMBING and n not in LIBC_NAMES and not n.startswith(LIBC_PREFIXES)]
    return [n for i, n in enumerate(kept) if i == 0 or kept[i - 1] != n]  # an inlined frame shows twice


def _where(frames: list[dict[str, Any]], after: int) -> str:
    """Where a thread waits: the first informative frame above index `after`, and a few of its callers."""
    names = _qemu_frames(frames[after + 1:])
    if not names:
        return "?"
    return names[0] + "".join(f" <- {n}" for n in names[1:1 + MAX_CALLERS])


class Graph:
    """The document indexed: names of contexts, nodes, threads, and what each coroutine is."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.threads = _dicts(state.get("threads"))
        self.contexts = {c.get("address"): c for c in _dicts(state.get("contexts"))}
        self.nodes = _dicts(state.get("nodes"))
        self.jobs = _dicts(state.get("jobs"))
        self.main = state.get("main_aio_context")
        self.by_lwp = {t.get("lwp"): t for t in self.threads if isinstance(t.get("lwp"), int)}
        self.node_names = {n.get("address"): self.node_label(n) for n in self.nodes}
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
            for req in _dicts(node.get("requests")):
                requests[req.get("address")] = (node, req)
                if req.get("co"):
                    self.coroutine_names[req["co"]] = (f"request {req.get('type')} {req.get('offset')}+"
                                                       f"{req.get('bytes')} on {self.node_label(node)}")
        for node in self.nodes:
            for req in _dicts(node.get("requests")):
                other = requests.get(req.get("waiting_for"))
                if req.get("co") and other and other[1].get("co"):
                    self.waits.setdefault(req["co"], []).append((other[1]["co"], "waits for"))
            mutex = node.get("reqs_lock")
            if isinstance(mutex, dict) and mutex.get("holder"):
                for waiter in _dicts(mutex.get("waiters")):
                    if waiter.get("co"):
                        self.waits.setdefault(waiter["co"], []).append(
                            (mutex["holder"], f"waits for the reqs_lock of {self.node_label(node)} held by"))
        for job in self.jobs:
            co = (job.get("coroutine") or {}).get("co") if isinstance(job.get("coroutine"), dict) else None
            if co:
                self.coroutine_names.setdefault(co, f"job {job.get('id')}'s coroutine")
            ops = {op.get("address"): op for op in _dicts(job.get("ops_in_flight"))}
            for op in ops.values():
                label = f"mirror op {op.get('offset')}+{op.get('bytes')} of job {job.get('id')}"
                if op.get("co"):
                    self.coroutine_names.setdefault(op["co"], label)
                target = ops.get(op.get("waiting_for_op"))
                if op.get("co") and target and target.get("co"):
                    self.waits.setdefault(op["co"], []).append((target["co"], "waits for"))
                for waiter in _dicts(op.get("waiters")):
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
        for i, frame in enumerate(_dicts(thread.get("frames"))[:12]):
            args: dict[str, Any] = frame["args"] if isinstance(frame.get("args"), dict) else {}
            if frame.get("function") == "aio_context_acquire":
                return args.get("ctx"), i
            if frame.get("function") in LOCK_FUNCTIONS and args.get("mutex") in locks:
                return locks[args["mutex"]], i
        return None

    def waiting_where(self, thread: dict[str, Any]) -> str:
        """Where a thread blocked on a context's lock is: aio_context_acquire and the callers above it."""
        waited = self.lock_waited(thread)
        frames = _dicts(thread.get("frames"))
        if waited is None:
            return "?"
        callers = _qemu_frames(frames[waited[1] + 1:])
        if frames[waited[1]].get("function") == "aio_context_acquire":
            callers = [n for n in callers if n != "aio_context_acquire"]
        return "aio_context_acquire" + (f", from {' <- '.join(callers[:MAX_CALLERS])}" if callers else "")

    def polled(self, thread: dict[str, Any]) -> tuple[Any, int] | None:
        """(AioContext address, frame index) when the thread is in aio_poll (blocked waiting for events)."""
        for i, frame in enumerate(_dicts(thread.get("frames"))[:12]):
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
        frames = _dicts(thread.get("frames"))
        waited = self.lock_waited(thread)
        if waited is not None:
            return f"waits for the lock of {self.context_name(waited[0])} in {self.waiting_where(thread)}"
        polled = self.polled(thread)
        if polled is not None:
            target = self.polled_for(frames, polled[1])
            return f"polls {self.context_name(polled[0])} in {_where(frames, polled[1])}{target}"
        names = _qemu_frames(frames)
        return f"is in {' <- '.join(names[:1 + MAX_CALLERS])}" if names else "is idle"


def _lock_deadlock(graph: Graph) -> str | None:
    """A thread blocked on an AioContext lock whose holder is itself blocked (polling or on a lock)."""
    for waiter in graph.threads:
        waited = graph.lock_waited(waiter)
        if waited is None:
            continue
        ctx = graph.contexts.get(waited[0]) or _only_held_elsewhere(graph, waiter) or {}
        owner_lwp = (ctx.get("lock") or {}).get("owner_lwp") if isinstance(ctx.get("lock"), dict) else None
        holder = graph.by_lwp.get(owner_lwp)
        name = graph.context_name(ctx.get("address", waited[0])).removeprefix("the ")
        if holder is None or holder is waiter:
            who = f"LWP {owner_lwp}" if owner_lwp else "no thread (lock free: a missed wake-up?)"
            return (f"{graph.thread_name(waiter)} waits for the lock of {name} in {graph.waiting_where(waiter)}, "
                    f"held by {who}")
        blocked = graph.polled(holder) is not None or graph.lock_waited(holder) is not None
        lead = "deadlock: " if blocked else ""
        return (f"{lead}{graph.thread_name(holder)} holds {name} and {graph.doing(holder)}; "
                f"{graph.thread_name(waiter)} waits for that lock in {graph.waiting_where(waiter)}"
                + ("" if blocked else " (the holder is not blocked: a long hold?)"))
    return None


def _only_held_elsewhere(graph: Graph, waiter: dict[str, Any]) -> dict[str, Any] | None:
    """The context a lock waiter waits for when gdb could not read aio_context_acquire's argument
    (optimised out): the one context whose lock another thread holds, if there is exactly one."""
    held = [c for c in graph.contexts.values() if isinstance(c.get("lock"), dict)
            and c["lock"].get("owner_lwp") not in (None, 0, waiter.get("lwp")) and (c["lock"].get("count") or 0) > 0]
    return held[0] if len(held) == 1 else None


def _cycle(graph: Graph) -> list[tuple[Any, str]] | None:
    """The first cycle of coroutines waiting for each other: [(coroutine, how it waits for the next)]."""
    for start in sorted(graph.waits, key=str):
        path: list[tuple[Any, str]] = []
        seen: dict[Any, int] = {}
        current = start
        while current in graph.waits and current not in seen:
            seen[current] = len(path)
            nxt, how = graph.waits[current][0]
            path.append((current, how))
            current = nxt
        if current in seen:
            return path[seen[current]:]
    return None


def _coroutine_deadlock(graph: Graph) -> str | None:
    cycle = _cycle(graph)
    if not cycle:
        return None
    names = [graph.co_name(co) for co, _ in cycle]
    for co, _ in cycle:  # two requests alike (same kind, range, node) told apart by their coroutines
        if names.count(graph.co_name(co)) > 1:
            graph.coroutine_names[co] = f"{graph.co_name(co)} (coroutine {co})"
    parts = [f"{graph.co_name(cycle[0][0])} {cycle[0][1]} {graph.co_name(cycle[1 % len(cycle)][0])}"]
    for i in range(1, len(cycle)):
        how = cycle[i][1]
        nxt = cycle[(i + 1) % len(cycle)][0]
        parts.append(f"which {how} {'the first' if nxt == cycle[0][0] and i > 1 else graph.co_name(nxt)}")
    return "deadlock: " + ", ".join(parts)


def _untracked(graph: Graph) -> tuple[dict[str, Any], int, int] | None:
    """The first node whose in_flight exceeds its tracked requests (the walker's full count)."""
    for node in graph.nodes:
        in_flight, tracked = node.get("in_flight"), node.get("tracked", len(_dicts(node.get("requests"))))
        if isinstance(in_flight, int) and isinstance(tracked, int) and in_flight > tracked:
            return node, in_flight, tracked
    return None


def _backend_untracked(graph: Graph) -> str | None:
    """A backend whose in_flight exceeds the requests tracked on its root node plus those it queued (a
    request it counted that never reached its node, or one it forgot to count down)."""
    by_address = {n.get("address"): n for n in graph.nodes}
    for blk in _dicts(graph.state.get("backends")):
        in_flight, root = blk.get("in_flight"), by_address.get(blk.get("root"))
        tracked = root.get("tracked", len(_dicts(root.get("requests")))) if root else 0
        queued: int = blk["queued_requests"] if isinstance(blk.get("queued_requests"), int) else 0
        if isinstance(in_flight, int) and isinstance(tracked, int) and in_flight > tracked + queued:
            name = f'backend "{blk["name"]}"' if blk.get("name") else f"backend {blk.get('address')}"
            return (f"{name}: in_flight {in_flight}, {tracked} tracked on its root, {queued} queued: "
                    f"{in_flight - tracked - queued} not a request")
    return None


def _pending(ctx: dict[str, Any] | None) -> str:
    """What a context still has to run: its scheduled coroutines and pending bottom halves."""
    if not ctx:
        return "not read"
    scheduled = _dicts(ctx.get("scheduled"))
    bhs = _dicts(ctx.get("bottom_halves"))
    parts = []
    if scheduled:
        parts.append(f"{len(scheduled)} coroutine{'s' * (len(scheduled) != 1)} scheduled ("
                     + ", ".join(_qemu_frames(_dicts(s.get("backtrace")))[:1][0] if _qemu_frames(
                         _dicts(s.get("backtrace"))) else str(s.get("co")) for s in scheduled[:3]) + ")")
    if bhs:
        parts.append(f"bottom halves pending: {', '.join(str(b.get('callback') or b.get('name')) for b in bhs[:4])}")
    return "; ".join(parts) if parts else "nothing scheduled, no bottom half pending"


def _pollers(graph: Graph) -> list[dict[str, Any]]:
    """Threads polling for something (a drain, AIO_WAIT_WHILE...), not an event loop idling at its top."""
    out = []
    for thread in graph.threads:
        polled = graph.polled(thread)
        if polled is None:
            continue
        above = _qemu_frames(_dicts(thread.get("frames"))[polled[1] + 1:])
        if not above or above[0] not in IDLE_LOOPS:
            out.append(thread)
    return out


def _leak(graph: Graph) -> str | None:
    found = _untracked(graph)
    if found is None:
        return None
    node, in_flight, tracked = found
    extra = in_flight - tracked
    ctx = graph.contexts.get(node.get("aio_context"))
    line = (f"{graph.node_label(node)} ({node.get('driver') or '?'}): in_flight {in_flight}, {tracked} tracked "
            f"request{'s' * (tracked != 1)}: {extra} not a request; {graph.context_name(node.get('aio_context'))}"
            f" has {_pending(ctx)}")
    pollers = _pollers(graph)
    if pollers:
        line = f"{line}; {graph.thread_name(pollers[0])} {graph.doing(pollers[0])}"
    return line


def _backend_leak(graph: Graph) -> str | None:
    found = _backend_untracked(graph)
    if found is None or _untracked(graph) is not None:  # a node's own excess says it better
        return None
    pollers = _pollers(graph)
    return f"{found}; {graph.thread_name(pollers[0])} {graph.doing(pollers[0])}" if pollers else found


def _waiting_requests(graph: Graph) -> str | None:
    """Coroutines that wait for others, no cycle: the first chain."""
    for co, edges in sorted(graph.waits.items(), key=lambda kv: str(kv[0])):
        target, how = edges[0]
        return f"{graph.co_name(co)} {how} {graph.co_name(target)}"
    return None


def _jobs(graph: Graph) -> str | None:
    parts = []
    for job in graph.jobs[:3]:
        co: dict[str, Any] = job["coroutine"] if isinstance(job.get("coroutine"), dict) else {}
        where = _qemu_frames(_dicts(co.get("backtrace")))[:3] if co else []
        state = "running on a thread" if co and co.get("running") else (" <- ".join(where) if where else "?")
        flags: dict[str, Any] = job["flags"] if isinstance(job.get("flags"), dict) else {}
        shown = [k for k in ("busy", "paused", "cancelled", "deferred_to_main_loop") if flags.get(k)]
        parts.append(f"job {job.get('id')} ({job.get('type')}, {job.get('status')}"
                     + (f", {', '.join(shown)}" if shown else "") + f"): coroutine in {state}")
    return "; ".join(parts) if parts else None


def _trim(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[:MAX_LINE - 3] + "..."


def explain(state: dict[str, Any]) -> str:
    """1-3 lines saying why the process is stuck ("" when the document says nothing: no threads, no graph)."""
    if not isinstance(state, dict) or "error" in state:
        return ""
    graph = Graph(state)
    lines: list[str] = []
    for finder in (_lock_deadlock, _coroutine_deadlock, _leak, _backend_leak, _waiting_requests):
        found = finder(graph)
        if found and found not in lines:
            lines.append(found)
        if len(lines) >= 2:
            break
    pollers = _pollers(graph)
    if not lines and pollers:
        thread = pollers[0]
        polled = graph.polled(thread)
        ctx = graph.contexts.get(polled[0]) if polled else None
        where = graph.context_name(polled[0] if polled else None)
        count = sum(len(_dicts(n.get("requests"))) for n in graph.nodes)
        lines.append(f"{graph.thread_name(thread)} {graph.doing(thread)}; {where} has {_pending(ctx)}; "
                     f"{count} tracked request{'s' * (count != 1)}, no node's in_flight above them")
    if not lines and graph.nodes and graph.threads and not pollers and not _dicts(graph.state.get("jobs")):
        count = sum(len(_dicts(n.get("requests"))) for n in graph.nodes)
        lines.append(f"QEMU is idle: no thread waits in the block layer, {count} tracked request{'s' * (count != 1)}, "
                     "no node's in_flight above them (whatever hangs waits for something QEMU was not asked for)")
    jobs = _jobs(graph)
    if jobs and len(lines) < 3:
        lines.append(jobs)
    return "\n".join(_trim(line) for line in lines[:3])
