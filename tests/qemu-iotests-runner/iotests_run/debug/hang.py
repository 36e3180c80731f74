"""Why a QEMU process is stuck, from the walker's document (gdbscripts/block_state.py): 1-3 lines.

A pure function of the document, so that crafted documents test it. It builds a wait-for graph:

- threads: one blocked in aio_context_acquire waits for that AioContext's lock, which the thread whose
  LWP the lock's pthread mutex names holds (7.2); one blocked on any other QemuMutex (the BQL, job_mutex, a
  node's reqs_lock on 10.x) waits for its holder the same way; one in aio_poll polls a context from some function
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

from typing import Any

from iotests_run.debug.hang_graph import BQL_NAMES, IDLE_LOOPS, Graph, dicts, qemu_frames

MAX_LINE = 400


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


def _mutex_deadlock(graph: Graph) -> str | None:
    """A thread blocked on a QemuMutex (the BQL, job_mutex, ...) whose holder is itself blocked: polling for work
    the waiter would do, or waiting for a lock. A vCPU thread waiting for the BQL is no cause: vCPUs queue for
    it all the time."""
    for waiter in graph.threads:
        mutex = graph.mutex_waited(waiter)
        if mutex is None or (waiter.get("label") == "vcpu" and mutex.get("name") in BQL_NAMES):
            continue
        name, where, owner = graph.mutex_name(mutex), graph.mutex_where(waiter, mutex), mutex.get("owner_lwp")
        holder = graph.by_lwp.get(owner)
        if holder is waiter:
            return f"deadlock: {graph.thread_name(waiter)} waits for {name} in {where}, which it holds itself"
        if holder is None:
            who = f"LWP {owner}" if owner else "no thread (free: a missed wake-up?)"
            return f"{graph.thread_name(waiter)} waits for {name} in {where}, held by {who}"
        blocked = any(f(holder) is not None for f in (graph.polled, graph.lock_waited, graph.mutex_waited))
        return (f"{'deadlock: ' if blocked else ''}{graph.thread_name(holder)} holds {name} and "
                f"{graph.doing(holder)}; {graph.thread_name(waiter)} waits for that mutex in {where}"
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
        in_flight, tracked = node.get("in_flight"), node.get("tracked", len(dicts(node.get("requests"))))
        if isinstance(in_flight, int) and isinstance(tracked, int) and in_flight > tracked:
            return node, in_flight, tracked
    return None


def _backend_untracked(graph: Graph) -> str | None:
    """A backend whose in_flight exceeds the requests tracked on its root node plus those it queued (a
    request it counted that never reached its node, or one it forgot to count down)."""
    by_address = {n.get("address"): n for n in graph.nodes}
    for blk in dicts(graph.state.get("backends")):
        in_flight, root = blk.get("in_flight"), by_address.get(blk.get("root"))
        tracked = root.get("tracked", len(dicts(root.get("requests")))) if root else 0
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
    scheduled = dicts(ctx.get("scheduled"))
    bhs = dicts(ctx.get("bottom_halves"))
    parts = []
    if scheduled:
        parts.append(f"{len(scheduled)} coroutine{'s' * (len(scheduled) != 1)} scheduled ("
                     + ", ".join(qemu_frames(dicts(s.get("backtrace")))[:1][0] if qemu_frames(
                         dicts(s.get("backtrace"))) else str(s.get("co")) for s in scheduled[:3]) + ")")
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
        above = qemu_frames(dicts(thread.get("frames"))[polled[1] + 1:])
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


GRAPH_WRITER = "bdrv_graph_wrlock"


def _graph_writer(graph: Graph) -> str | None:
    """10.x: a thread polling in bdrv_graph_wrlock waits for the graph lock's readers to leave; the contexts
    that still count readers, the readers counted for contexts that are gone, and the coroutines queued to read
    say who. Readers counted while no coroutine is parked on the lock: a read lock that was never released."""
    for thread in graph.threads:
        polled = graph.polled(thread)
        above = qemu_frames(dicts(thread.get("frames"))[polled[1] + 1:]) if polled else []
        if GRAPH_WRITER not in above[:4]:
            continue
        found = graph.state.get("graph_lock")
        lock: dict[str, Any] = found if isinstance(found, dict) else {}
        readers = [(graph.context_name(address), ctx["graph_readers"]) for address, ctx in graph.contexts.items()
                   if isinstance(ctx.get("graph_readers"), int) and ctx["graph_readers"] > 0]
        orphaned = lock.get("orphaned_readers")
        if isinstance(orphaned, int) and orphaned > 0:
            readers.append(("contexts that are gone", orphaned))
        queued = len(dicts(lock.get("queued_readers")))
        counted = "; ".join(f"{n} reader{'s' * (n != 1)} counted in {where}" for where, n in readers)
        callers = above[above.index(GRAPH_WRITER) + 1:][:3]
        line = (f"{graph.thread_name(thread)} waits for the graph lock's readers in {GRAPH_WRITER}"
                + (f", from {' <- '.join(callers)}" if callers else "") + ": ")
        if not readers:
            return line + "no reader counted any more (a missed wake-up?)"
        return line + counted + (f"; {queued} coroutine{'s' * (queued != 1)} queued to read" if queued else
                                 "; no coroutine parked on the lock: a read lock never released?")
    return None


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
        where = qemu_frames(dicts(co.get("backtrace")))[:3] if co else []
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
    for finder in (_lock_deadlock, _mutex_deadlock, _coroutine_deadlock, _graph_writer, _leak, _backend_leak,
                   _waiting_requests):
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
        count = sum(len(dicts(n.get("requests"))) for n in graph.nodes)
        lines.append(f"{graph.thread_name(thread)} {graph.doing(thread)}; {where} has {_pending(ctx)}; "
                     f"{count} tracked request{'s' * (count != 1)}, no node's in_flight above them")
    if not lines and graph.nodes and graph.threads and not pollers and not dicts(graph.state.get("jobs")):
        count = sum(len(dicts(n.get("requests"))) for n in graph.nodes)
        lines.append(f"QEMU is idle: no thread waits in the block layer, {count} tracked request{'s' * (count != 1)}, "
                     "no node's in_flight above them (whatever hangs waits for something QEMU was not asked for)")
    jobs = _jobs(graph)
    if jobs and len(lines) < 3:
        lines.append(jobs)
    return "\n".join(_trim(line) for line in lines[:3])
