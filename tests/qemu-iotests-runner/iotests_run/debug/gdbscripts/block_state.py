"""gdb command `iotests-block-state FILE`: QEMU's block-layer state read from memory, as JSON in FILE.

Loaded into gdb (`-x` or `source`) attached to a QEMU process or opened on a core. It reads
memory only and calls no function of the process: a deadlocked process may never return from
one, and a core has no process. What it reads (facts of QEMU's block.c, block-backend.c, io.c,
job.c, graph-lock.c and coroutine-ucontext.c, 7.2 and 10.x):

- every BlockDriverState (all_bdrv_states), its children and their permissions, its tracked
  requests with the backtrace of the coroutine that issued each one;
- every BlockBackend (block_backends) and every job (jobs);
- bdrv_drain_all_count and, on 10.x, the graph lock's writer flag;
- each thread's current coroutine and the chain of coroutines that called it;
- for a thread that died of a crash signal (a core): "crash", written first and on its own (the
  signal and faulting address, the assertion's text or the Error &error_abort aborted on, QEMU's
  first frames with every node, child, backend, job and AioContext pointer argument checked
  against the live lists, and, when not live, whether its memory holds the MALLOC_PERTURB_ fill
  or sits in glibc's tcache).

A parked coroutine's registers are in its sigjmp_buf, rbp/rsp/pc mangled by glibc (rotate left
0x11 after xor with the pointer guard at $fs_base + 0x30). To unwind one, an unwinder hands
gdb those registers as the caller of the thread's innermost frame that is not inlined, with a
frame id below the coroutine's stack so that gdb's "inner frame" check holds; gdb's own DWARF
unwinder does the rest. A coroutine that is some thread's current one is running: its jmp_buf
is stale, and it is unwound from that thread's registers instead.
Everything is bounded: nodes, requests, frames and list lengths.
"""

from __future__ import annotations

import json
import os
from typing import Any

import gdb

from iotests_run.debug.gdbscripts.walker_crash import crash_facts
from iotests_run.debug.gdbscripts.walker_graph import block_state
from iotests_run.debug.gdbscripts.walker_hang import hang_facts


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
