"""The block graph read from memory: nodes, children, tracked requests, backends, jobs, each thread's
current coroutine (`block_state`). Runs inside gdb (block_state.py)."""

from __future__ import annotations

from typing import Any

import gdb

from iotests_run.debug.gdbscripts.walker_base import (
    MAX_LIST,
    MAX_NODES,
    MAX_REQUESTS,
    Coroutines,
    _addr,
    _enum,
    _get,
    _int,
    _items,
    _static,
    _string,
)

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
    lock = _get(b, "queued_requests_lock")  # 10.x: a QemuMutex
    return {"address": _addr(blk), "name": _string(b["name"]),
            "queued_requests_lock": hex(int(lock.address)) if lock is not None else None,
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
