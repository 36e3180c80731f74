"""debug/hang.py: the explanation of a stuck QEMU from crafted walker documents."""

from __future__ import annotations

from typing import Any

import pytest

from iotests_run.debug import hang

pytestmark = pytest.mark.unit

MAIN_CTX, IO_CTX = "0x100", "0x200"


def frames(*names: str, **args: dict[str, str]) -> list[dict[str, Any]]:
    """Frames innermost first; args maps a function name to its pointer arguments."""
    return [{"function": n, "pc": "0x1", **({"args": args[n]} if n in args else {})} for n in names]


def thread(num: int, lwp: int, label: str, *names: str, **args: dict[str, str]) -> dict[str, Any]:
    return {"num": num, "name": "qemu-system-x86", "lwp": lwp, "label": label, "current": None, "callers": [],
            "frames": frames(*names, **args)}


def context(address: str, name: str, owner: int = 0, count: int = 0, **fields: Any) -> dict[str, Any]:
    return {"address": address, "name": name, "scheduled": [], "bottom_halves": [],
            "lock": {"owner_lwp": owner, "count": count}, **fields}


def node(address: str = "0x10", name: str = "disk", **fields: Any) -> dict[str, Any]:
    base = {"address": address, "node_name": name, "driver": "qcow2", "aio_context": MAIN_CTX, "in_flight": 0,
            "tracked": 0, "requests": [], "children": []}
    return {**base, **fields}


def document(**fields: Any) -> dict[str, Any]:
    base = {"main_aio_context": MAIN_CTX, "nodes": [], "backends": [], "jobs": [], "threads": [], "contexts": []}
    return {**base, **fields}


POLLING_MAIN = thread(1, 100, "main", "__ppoll", "qemu_poll_ns", "aio_poll", "bdrv_drained_end", "qmp_transaction",
                      aio_poll={"ctx": MAIN_CTX})
WAITING_IO = thread(3, 103, "iothr0", "__lll_lock_wait", "pthread_mutex_lock", "qemu_rec_mutex_lock_impl",
                    "aio_context_acquire", "bug_bh", "aio_bh_poll", "aio_poll", "iothread_run",
                    aio_context_acquire={"ctx": IO_CTX})


def test_aiocontext_deadlock_names_the_holder_what_it_polls_and_the_waiter() -> None:
    doc = document(threads=[POLLING_MAIN, WAITING_IO],
                   contexts=[context(MAIN_CTX, "main"), context(IO_CTX, "iothr0", owner=100, count=2)])
    first = hang.explain(doc).splitlines()[0]
    assert first == ("deadlock: thread 1 (main) holds AioContext iothr0 and polls the main context in "
                     "bdrv_drained_end <- qmp_transaction; "
                     "thread 3 (iothr0) waits for that lock in aio_context_acquire, from bug_bh <- aio_bh_poll <- "
                     "iothread_run")


def test_a_lock_holder_that_is_running_is_no_deadlock() -> None:
    running = thread(1, 100, "main", "memcpy", "qcow2_co_pwritev", "bdrv_co_pwritev")
    doc = document(threads=[running, WAITING_IO], contexts=[context(IO_CTX, "iothr0", owner=100, count=1)])
    first = hang.explain(doc).splitlines()[0]
    assert not first.startswith("deadlock")
    assert "thread 1 (main) holds AioContext iothr0 and is in qcow2_co_pwritev" in first


def test_a_lock_waited_for_with_no_owner_says_so() -> None:
    doc = document(threads=[WAITING_IO], contexts=[context(IO_CTX, "iothr0")])
    assert "held by no thread" in hang.explain(doc)


def request(address: str, co: str, offset: int, waiting_for: str | None = None) -> dict[str, Any]:
    return {"address": address, "type": "write", "offset": offset, "bytes": 4096, "co": co,
            "waiting_for": waiting_for, "backtrace": []}


def test_two_requests_waiting_on_each_other_are_a_deadlock() -> None:
    disk = node(in_flight=2, tracked=2, requests=[request("0xa", "0xca", 0, "0xb"), request("0xb", "0xcb", 512, "0xa")])
    first = hang.explain(document(nodes=[disk])).splitlines()[0]
    assert first == ('deadlock: request write 0+4096 on node "disk" waits for request write 512+4096 on node "disk", '
                     'which waits for request write 0+4096 on node "disk"')


def test_three_coroutines_in_a_cycle_end_with_the_first() -> None:
    disk = node(in_flight=3, tracked=3, requests=[request("0xa", "0xca", 0, "0xb"), request("0xb", "0xcb", 1, "0xc"),
                                                  request("0xc", "0xcc", 2, "0xa")])
    assert hang.explain(document(nodes=[disk])).splitlines()[0].endswith("which waits for the first")


def test_a_request_waiting_without_cycle_is_named_with_what_it_waits_for() -> None:
    disk = node(in_flight=2, tracked=2, requests=[request("0xa", "0xca", 0, "0xb"), request("0xb", "0xcb", 512)])
    first = hang.explain(document(nodes=[disk])).splitlines()[0]
    assert first == 'request write 0+4096 on node "disk" waits for request write 512+4096 on node "disk"'


def test_mirror_ops_waiting_on_each_other_are_a_deadlock() -> None:
    ops = [{"address": "0x1", "offset": 0, "bytes": 65536, "co": "0xc1", "waiting_for_op": "0x2", "waiters": []},
           {"address": "0x2", "offset": 65536, "bytes": 65536, "co": "0xc2", "waiting_for_op": "0x1", "waiters": []}]
    job = {"address": "0x40", "id": "mirror0", "type": "mirror", "status": "running", "ops_in_flight": ops,
           "coroutine": {"co": "0xc9", "running": False, "backtrace": frames("qemu_coroutine_yield", "mirror_run")}}
    lines = hang.explain(document(jobs=[job])).splitlines()
    assert lines[0].startswith("deadlock: mirror op 0+65536 of job mirror0 waits for mirror op 65536+65536")
    assert lines[-1] == "job mirror0 (mirror, running): coroutine in mirror_run"


def test_a_request_parked_on_a_mirror_op_waits_for_its_coroutine() -> None:
    ops = [{"address": "0x1", "offset": 0, "bytes": 65536, "co": "0xc1", "waiting_for_op": None,
            "waiters": [{"co": "0xca", "backtrace": []}]}]
    job = {"address": "0x40", "id": "m", "type": "mirror", "status": "ready", "ops_in_flight": ops}
    disk = node(in_flight=1, tracked=1, requests=[request("0xa", "0xca", 0)])
    first = hang.explain(document(nodes=[disk], jobs=[job])).splitlines()[0]
    assert first == 'request write 0+4096 on node "disk" waits for mirror op 0+65536 of job m'


def test_comutex_waiters_wait_for_the_holder() -> None:
    lock = {"locked": 2, "holder": "0xcb", "waiters": [{"co": "0xca", "backtrace": []}]}
    disk = node(in_flight=2, tracked=2, reqs_lock=lock,
                requests=[request("0xa", "0xca", 0), request("0xb", "0xcb", 8192, "0xa")])
    first = hang.explain(document(nodes=[disk])).splitlines()[0]
    assert first.startswith('deadlock: request write 0+4096 on node "disk" waits for the reqs_lock of node "disk" '
                            'held by request write 8192+4096')


def test_in_flight_above_tracked_requests_is_flagged_with_what_the_context_has() -> None:
    poller = thread(1, 100, "main", "__ppoll", "aio_poll", "bdrv_do_drained_begin", "bdrv_drained_begin",
                    "bdrv_drain", "bdrv_close", aio_poll={"ctx": MAIN_CTX})
    bh = {"address": "0x5", "callback": "bdrv_co_drain_bh_cb", "flags": 3}
    doc = document(nodes=[node(in_flight=2, tracked=1, requests=[request("0xa", "0xca", 0)])], threads=[poller],
                   contexts=[context(MAIN_CTX, "main", bottom_halves=[bh])])
    first = hang.explain(doc).splitlines()[0]
    assert first.startswith('node "disk" (qcow2): in_flight 2, 1 tracked request: 1 not a request; the main context '
                            'has bottom halves pending: bdrv_co_drain_bh_cb; thread 1 (main) polls the main context in '
                            "bdrv_do_drained_begin <- bdrv_drained_begin <- bdrv_drain <- bdrv_close")


def test_in_flight_leak_with_nothing_scheduled() -> None:
    doc = document(nodes=[node(in_flight=1, tracked=0)], contexts=[context(MAIN_CTX, "main")])
    first = hang.explain(doc).splitlines()[0]
    assert "in_flight 1, 0 tracked requests: 1 not a request; the main context has nothing scheduled" in first


def test_scheduled_coroutines_are_named_by_their_innermost_qemu_frame() -> None:
    scheduled = [{"co": "0xc", "backtrace": frames("qemu_coroutine_switch", "bdrv_co_yield_to_drain")}]
    doc = document(nodes=[node(in_flight=1, tracked=0)], contexts=[context(MAIN_CTX, "main", scheduled=scheduled)])
    assert "1 coroutine scheduled (bdrv_co_yield_to_drain)" in hang.explain(doc)


def test_only_a_poller_says_where_it_polls_and_that_the_counters_agree() -> None:
    doc = document(threads=[POLLING_MAIN], nodes=[node()], contexts=[context(MAIN_CTX, "main")])
    assert hang.explain(doc) == ("thread 1 (main) polls the main context in bdrv_drained_end <- qmp_transaction; "
                                 "the main context has nothing scheduled, no bottom half pending; 0 tracked requests, "
                                 "no node's in_flight above them")


def test_nothing_known_explains_nothing() -> None:
    assert hang.explain({"error": "no block state"}) == ""
    assert hang.explain(document()) == ""


@pytest.mark.parametrize("junk", [{"threads": "x", "nodes": [1, None, "a"], "contexts": {"a": 1}, "jobs": [[]]},
                                  {"nodes": [{"requests": "no", "reqs_lock": 3, "in_flight": "9"}],
                                   "jobs": [{"coroutine": [], "flags": 1, "ops_in_flight": {}}]}])
def test_malformed_documents_never_raise(junk: dict[str, Any]) -> None:
    assert isinstance(hang.explain(junk), str)


def test_lines_are_bounded() -> None:
    disk = node(name="n" * 5000, in_flight=1, tracked=0)
    assert all(len(line) <= hang.MAX_LINE for line in hang.explain(document(nodes=[disk])).splitlines())


def test_the_text_dump_names_threads_contexts_and_shows_node_addresses_flags_and_untracked_in_flight() -> None:
    from iotests_run.debug import blockstate

    disk = node(in_flight=2, tracked=1, read_only=True, inactive=True, requests=[request("0xa", "0xca", 0)],
                aio_context=IO_CTX)
    doc = document(nodes=[disk], threads=[POLLING_MAIN, WAITING_IO], drain_all_count=0,
                   contexts=[context(MAIN_CTX, "main"), context(IO_CTX, "iothr0", owner=100, count=2)])
    text = blockstate.text(doc, "title")
    assert '"disk" qcow2 (0x10, read-only, inactive)' in text
    assert "AioContext iothr0 (0x200), in_flight 2 (1 tracked request; 1 not a request)" in text
    assert "thread 3 (iothr0, LWP 103): current coroutine" in text
    assert "iothr0 (0x200): lock held by thread 1 (main, LWP 100), depth 2" in text
    assert "aio_context_acquire (0x1) [ctx=0x200]" in text


def test_collect_puts_the_explanation_of_the_block_documents_it_finds(tmp_path: Any) -> None:
    import json

    from iotests_run.debug import diagnostics

    doc = document(threads=[POLLING_MAIN, WAITING_IO],
                   contexts=[context(MAIN_CTX, "main"), context(IO_CTX, "iothr0", owner=100, count=2)])
    (tmp_path / "block-42-qemu-system-x86_64.json").write_text(json.dumps(doc))
    (tmp_path / "block-41-qemu-io.json").write_text(json.dumps(document(nodes=[node(in_flight=1)])))
    why = diagnostics._hang_explanation(tmp_path, {41: ["/b/qemu-io"], 42: ["/b/qemu-system-x86_64"], 7: ["sh"]})
    assert why.startswith("deadlock: thread 1 (main) holds AioContext iothr0")
    assert why.splitlines()[0].endswith("[qemu-system-x86_64 42]")
    assert diagnostics._hang_explanation(tmp_path, {9: ["/b/qemu-img"]}) == ""


def test_a_lock_waiter_whose_ctx_argument_was_optimised_out_uses_the_one_held_lock() -> None:
    waiter = thread(3, 103, "iothr0", "__lll_lock_wait", "qemu_rec_mutex_lock_impl", "aio_context_acquire",
                    "aio_bh_poll")
    doc = document(threads=[POLLING_MAIN, waiter],
                   contexts=[context(MAIN_CTX, "main"), context(IO_CTX, "iothr0", owner=100, count=1)])
    assert hang.explain(doc).startswith("deadlock: thread 1 (main) holds AioContext iothr0 and polls")


def test_a_thread_blocked_in_the_mutex_of_a_context_lock_waits_for_it_when_aio_context_acquire_was_inlined() -> None:
    waiter = thread(3, 103, "iothread0", "lll_mutex_lock_optimized", "___pthread_mutex_lock", "qemu_mutex_lock_impl",
                    "bug_bh", "aio_bh_call", "aio_bh_poll", "aio_poll", "iothread_run",
                    qemu_mutex_lock_impl={"mutex": "0x260"})
    held = context(IO_CTX, "iothread0", owner=100, count=2)
    held["lock"]["address"] = "0x260"
    doc = document(threads=[POLLING_MAIN, waiter], contexts=[context(MAIN_CTX, "main"), held])
    assert hang.explain(doc).splitlines()[0] == (
        "deadlock: thread 1 (main) holds AioContext iothread0 and polls the main context in bdrv_drained_end <- "
        "qmp_transaction; thread 3 (iothread0) waits for that lock in aio_context_acquire, from bug_bh <- "
        "aio_bh_call <- aio_bh_poll")


def test_alike_requests_in_a_cycle_are_told_apart_by_their_coroutines() -> None:
    disk = node(in_flight=2, tracked=2, requests=[request("0xa", "0xca", 0, "0xb"), request("0xb", "0xcb", 0, "0xa")])
    first = hang.explain(document(nodes=[disk])).splitlines()[0]
    assert "(coroutine 0xca) waits for" in first and "(coroutine 0xcb), which waits for" in first


def test_a_backend_counting_more_than_its_root_has_is_flagged() -> None:
    blk = {"address": "0x30", "name": "drive0", "root": "0x10", "in_flight": 2, "queued_requests": 0}
    doc = document(nodes=[node(in_flight=1, tracked=1, requests=[request("0xa", "0xca", 0)])], backends=[blk])
    assert hang.explain(doc).splitlines()[0] == ('backend "drive0": in_flight 2, 1 tracked on its root, 0 queued: '
                                                 "1 not a request")


def test_a_poller_names_the_node_it_drains_and_an_unlisted_one_as_such() -> None:
    poller = thread(1, 100, "main", "aio_poll", "bdrv_do_drained_begin", "bdrv_drain", "bdrv_close",
                    aio_poll={"ctx": MAIN_CTX}, bdrv_drain={"bs": "0x10"})
    doc = document(threads=[poller], nodes=[node()], contexts=[context(MAIN_CTX, "main")])
    assert '<- bdrv_close for node "disk";' in hang.explain(doc)
    poller["frames"][2]["args"] = {"bs": "0x99"}
    assert "for node 0x99 (not in all_bdrv_states: being deleted?)" in hang.explain(doc)


def test_an_iothread_idling_in_its_loop_is_no_poller_and_an_idle_qemu_says_so() -> None:
    idle = thread(3, 103, "iothr0", "__ppoll", "aio_poll", "iothread_run", "qemu_thread_start",
                  aio_poll={"ctx": IO_CTX})
    main = thread(1, 100, "main", "__ppoll", "qemu_poll_ns", "os_host_main_loop_wait", "main_loop_wait")
    doc = document(threads=[main, idle], nodes=[node()], contexts=[context(MAIN_CTX, "main")])
    assert hang.explain(doc).startswith("QEMU is idle: no thread waits in the block layer, 0 tracked requests")


def test_a_function_shown_twice_in_a_row_inlined_is_named_once() -> None:
    poller = thread(1, 100, "main", "aio_poll", "bdrv_drain_all_begin", "bdrv_drain_all_begin", "bdrv_drain_all",
                    aio_poll={"ctx": MAIN_CTX})
    doc = document(threads=[poller], nodes=[node(in_flight=1)], contexts=[context(MAIN_CTX, "main")])
    assert "polls the main context in bdrv_drain_all_begin <- bdrv_drain_all" in hang.explain(doc)


def mutex_waiter(num: int, lwp: int, label: str, name: str | None, owner: int, *names: str) -> dict[str, Any]:
    """A thread blocked in qemu_mutex_lock_impl, as the walker reads it: the mutex's name and holder."""
    t = thread(num, lwp, label, "__lll_lock_wait", "___pthread_mutex_lock", "qemu_mutex_lock_impl", *names,
               qemu_mutex_lock_impl={"mutex": "0x5000"})
    t["waits_for_mutex"] = {"address": "0x5000", "name": name, "owner_lwp": owner, "count": 1, "frame": 2}
    return t


def test_a_thread_waiting_for_the_bql_held_by_a_poller_is_a_deadlock() -> None:
    waiter = mutex_waiter(3, 103, "iothr0", "bql", 100, "bql_lock_impl", "bug_bh", "aio_bh_call", "aio_bh_poll",
                          "aio_poll", "iothread_run")
    doc = document(threads=[POLLING_MAIN, waiter], contexts=[context(MAIN_CTX, "main")])
    first = hang.explain(doc).splitlines()[0]
    assert first == ("deadlock: thread 1 (main) holds the BQL (bql) and polls the main context in bdrv_drained_end "
                     "<- qmp_transaction; thread 3 (iothr0) waits for that mutex in bug_bh <- aio_bh_call <- "
                     "aio_bh_poll <- iothread_run")


def test_two_threads_waiting_for_each_others_mutex_say_who_holds_what() -> None:
    a = mutex_waiter(1, 100, "main", "job_mutex", 103, "job_lock", "job_enter")
    b = mutex_waiter(3, 103, "iothr0", None, 100, "bdrv_co_get_self_request")
    b["waits_for_mutex"]["address"] = "0x7000"
    first = hang.explain(document(threads=[a, b])).splitlines()[0]
    assert first == ("deadlock: thread 3 (iothr0) holds mutex job_mutex and waits for mutex 0x7000 (held by "
                     "thread 1 (main)) in bdrv_co_get_self_request; thread 1 (main) waits for that mutex in job_enter")


def test_a_mutex_held_by_a_running_thread_is_a_long_hold_not_a_deadlock() -> None:
    running = thread(1, 100, "main", "memcpy", "qcow2_co_pwritev")
    waiter = mutex_waiter(3, 103, "worker", "job_mutex", 100, "job_lock", "job_ref")
    first = hang.explain(document(threads=[running, waiter])).splitlines()[0]
    assert first == ("thread 1 (main) holds mutex job_mutex and is in qcow2_co_pwritev; thread 3 (worker) waits "
                     "for that mutex in job_ref (the holder is not blocked: a long hold?)")


def test_a_mutex_waited_for_by_its_own_holder_or_by_nobody_is_said_so() -> None:
    own = mutex_waiter(1, 100, "main", "job_mutex", 100, "job_lock", "job_ref")
    assert hang.explain(document(threads=[own])).splitlines()[0] == (
        "deadlock: thread 1 (main) waits for mutex job_mutex in job_ref, which it holds itself")
    free = mutex_waiter(1, 100, "main", None, 0, "bdrv_graph_wrlock")
    assert hang.explain(document(threads=[free])).splitlines()[0] == (
        "thread 1 (main) waits for mutex 0x5000 in bdrv_graph_wrlock, held by no thread (free: a missed wake-up?)")


def test_vcpus_queued_for_the_bql_are_no_cause() -> None:
    vcpu = mutex_waiter(5, 105, "vcpu", "qemu_global_mutex", 100, "qemu_mutex_lock_iothread_impl", "kvm_cpu_exec")
    first = hang.explain(document(threads=[POLLING_MAIN, vcpu])).splitlines()[0]
    assert "vcpu" not in first and "BQL" not in first


def test_a_context_lock_waited_in_qemu_mutex_lock_is_told_as_the_context_lock() -> None:
    waiter = mutex_waiter(3, 103, "iothr0", None, 100, "aio_context_acquire", "bug_bh", "aio_bh_poll")
    waiter["frames"][3]["args"] = {"ctx": IO_CTX}
    doc = document(threads=[POLLING_MAIN, waiter], contexts=[context(IO_CTX, "iothr0", owner=100, count=1)])
    assert hang.explain(doc).splitlines()[0].startswith("deadlock: thread 1 (main) holds AioContext iothr0")


WRITER = thread(1, 100, "main", "__ppoll", "qemu_poll_ns", "aio_poll", "bdrv_graph_wrlock", "blk_remove_bs",
                "blk_delete", "blk_unref", aio_poll={"ctx": MAIN_CTX})


def test_a_graph_writer_waiting_for_a_reader_nobody_queues_on_says_a_read_lock_was_never_released() -> None:
    doc = document(threads=[WRITER], contexts=[context(MAIN_CTX, "main", graph_readers=1),
                                               context(IO_CTX, "iothr0", graph_readers=0)],
                   graph_lock={"has_writer": 0, "orphaned_readers": 0, "queued_readers": []})
    assert hang.explain(doc).splitlines()[0] == (
        "thread 1 (main) waits for the graph lock's readers in bdrv_graph_wrlock, from blk_remove_bs <- blk_delete "
        "<- blk_unref: 1 reader counted in the main context; no coroutine parked on the lock: a read lock never "
        "released?")


def test_a_graph_writer_names_every_context_with_readers_the_orphans_and_the_queue() -> None:
    doc = document(threads=[WRITER], contexts=[context(MAIN_CTX, "main"), context(IO_CTX, "iothr0", graph_readers=2)],
                   graph_lock={"has_writer": 0, "orphaned_readers": 1,
                               "queued_readers": [{"co": "0x9", "backtrace": []}]})
    first = hang.explain(doc).splitlines()[0]
    assert first.endswith(": 2 readers counted in AioContext iothr0; 1 reader counted in contexts that are gone; "
                          "1 coroutine queued to read")
    doc["contexts"][1]["graph_readers"] = 0
    doc["graph_lock"]["orphaned_readers"] = 0
    assert hang.explain(doc).splitlines()[0].endswith("no reader counted any more (a missed wake-up?)")


def test_a_poller_elsewhere_is_no_graph_writer() -> None:
    doc = document(threads=[POLLING_MAIN], contexts=[context(MAIN_CTX, "main", graph_readers=1)])
    assert "graph lock" not in hang.explain(doc)


def test_a_mutex_inside_a_node_or_a_backend_is_named_by_what_holds_it() -> None:
    """10.x: a node's reqs_lock and a backend's queued_requests_lock are QemuMutexes on the heap."""
    running = thread(1, 100, "main", "memcpy", "qcow2_co_pwritev")
    waiter = mutex_waiter(3, 103, "iothr0", None, 100, "bdrv_co_get_self_request")
    disk = node("0x10", "disk", reqs_lock_address="0x5000")
    first = hang.explain(document(threads=[running, waiter], nodes=[disk])).splitlines()[0]
    assert first.startswith('thread 1 (main) holds the reqs_lock of node "disk" and is in qcow2_co_pwritev;')
    backend = {"address": "0x70", "name": "drive0", "root": "0x10", "in_flight": 0, "queued_requests": 0,
               "queued_requests_lock": "0x5000"}
    first = hang.explain(document(threads=[running, waiter], backends=[backend])).splitlines()[0]
    assert first.startswith('thread 1 (main) holds the queued_requests_lock of backend "drive0" and')
