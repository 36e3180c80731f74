"""debug/blockstate.py: a block-layer state document rendered as text, DOT and SVG, and loaded."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from iotests_run.debug import blockstate
from support import HOSTILE_STATE, block_node, block_state, needs_dot


@pytest.mark.unit
def test_text_escapes_control_characters_so_no_line_is_forged() -> None:
    out = blockstate.text(HOSTILE_STATE, "Block-layer state of qemu-io (1), live\x1b]0;title\x07")
    assert not any(c in out for c in "\x1b\x9b\x07")
    assert not any(line.startswith("forged") for line in out.splitlines())
    assert "/img/a\\nforged: line\\x1b[2J&b.qcow2" in out
    assert "\\x1b]0;title\\x07" in out.splitlines()[0]
    assert "f\\nx (0x1) at a\\x1b.c:3" in out
    assert "job\\n1: mirror" in out and "thread 1 (qemu\\x1b)" in out
    line = blockstate.summary(HOSTILE_STATE, "qemu-io\x1b (1)")
    assert "\n" not in line and "\x1b" not in line and "in flight: write\\x1b 0+512" in line


@pytest.mark.unit
def test_dot_escapes_quotes_backslashes_entities_and_controls() -> None:
    graph = blockstate.dot(HOSTILE_STATE, 'title "quoted" \\ <&>')
    assert not any(c in graph for c in "\x1b\x9b")
    assert 'label="title \\"quoted\\" \\\\ &lt;&amp;&gt;"' in graph
    assert '"n\\"&lt;b&gt;\\\\\\\\x1b\\n' in graph  # the node name: n"<b>\ then ESC shown as \x1b
    assert "/img/a\\\\nforged: line\\\\x1b[2J&amp;b.qcow2\\n" in graph


@pytest.mark.process
@needs_dot
def test_a_hostile_filename_still_makes_well_formed_svg() -> None:
    image = blockstate.svg(blockstate.dot(HOSTILE_STATE, "t"))
    assert image is not None
    texts = [t.text for t in ET.fromstring(image).iter("{http://www.w3.org/2000/svg}text")]
    assert "/img/a\\nforged: line\\x1b[2J&b.qcow2" in texts
    assert 'n"<b>\\\\x1b' in texts
    assert "job job\\n1" in texts


@pytest.mark.unit
def test_renderers_take_any_document_without_raising(tmp_path: Path) -> None:
    odd: list[Any] = [
        {"nodes": "abc"}, {"nodes": [1]}, {"nodes": [{"children": [None]}]}, {"threads": [{"callers": 5}]},
        block_state(block_node(filename=12, node_name=None, children=[{"perm": "RW", "role": None}], requests=[{}])),
        block_state(block_node(filename="\ud800 lone surrogate \uffff")),
    ]
    for doc in odd:
        for rendered in (blockstate.text(doc, "t"), blockstate.dot(doc, "t"), blockstate.summary(doc, "q")):
            rendered.encode("utf-8")  # no lone surrogate left
    assert "not a document of the walker" in blockstate.text({"nodes": [1]}, "t")
    assert "\\ud800 lone surrogate \\uffff" in blockstate.text(odd[-1], "t")
    assert "\\\\ud800 lone surrogate \\\\uffff" in blockstate.dot(odd[-1], "t")  # the backslash escaped in DOT


@pytest.mark.unit
def test_load_says_why_there_is_no_document(tmp_path: Path) -> None:
    assert blockstate.load(tmp_path / "none") == {"error": "no block state from gdb (gdb wrote none)"}
    (tmp_path / "bad").write_text("{not json")
    assert "is not JSON" in blockstate.load(tmp_path / "bad")["error"]
    (tmp_path / "deep").write_text("[" * 100_000 + "]" * 100_000)
    assert "is not JSON" in blockstate.load(tmp_path / "deep")["error"]
    (tmp_path / "list").write_text('{"nodes": 3}')
    assert "not a document of the walker" in blockstate.load(tmp_path / "list")["error"]
    (tmp_path / "refused").write_text('{"error": "no all_bdrv_states\\u001b[2J"}')
    assert blockstate.load(tmp_path / "refused") == {"error": "no all_bdrv_states\\x1b[2J"}
    (tmp_path / "fine").write_text(json.dumps(HOSTILE_STATE))
    assert blockstate.load(tmp_path / "fine") == HOSTILE_STATE  # raw: --json keeps what the walker read


# A crafted graph, as the walker writes it: a qcow2 node with a write in flight over a quiesced file node
# in an iothread and a frozen backing node; a backend with a device, an anonymous one; a mirror job.
LONG_NAME = "/images/" + "x" * 80 + "/base.raw"
GRAPH = block_state(
    block_node(in_flight=1, children=[
        {"name": "file", "node": "0x20", "role": 2 | 16, "perm": 1 | 2, "shared_perm": 1 | 4 | 8},
        {"name": "backing", "node": "0x30", "role": 8, "perm": 1, "shared_perm": 15, "frozen": True}],
        requests=[{"type": "write", "offset": 4096, "bytes": 512, "co": "0xc0", "waiting_for": "0xc1",
                   "backtrace": [{"function": "qemu_coroutine_switch", "pc": "0x1"},
                                 {"function": "qcow2_co_pwritev_part", "pc": "0x2", "file": "block/qcow2.c",
                                  "line": 10},
                                 {"function": "bdrv_co_pwritev", "pc": "0x3"}]}]),
    block_node(address="0x20", node_name="file-node", driver="file", aio_context="0x99", quiesce_counter=1),
    block_node(address="0x30", node_name="base", driver="raw", filename=LONG_NAME, refcnt=2),
    backends=[{"address": "0x40", "name": "drive0", "root": "0x10", "device": "0x77", "in_flight": 1,
               "quiesce_counter": 0, "queued_requests": 2},
              {"address": "0x41", "name": "", "root": None}],
    jobs=[{"address": "0x50", "id": "mirror0", "type": "mirror", "status": "running", "pause_count": 0, "ret": 0,
           "busy": True, "nodes": [{"name": "main node", "node": "0x10", "perm": 0, "shared_perm": 15},
                                   {"name": "target", "node": "0x30"}]}],
    threads=[{"num": 1, "name": "qemu-io", "current": "0xc0",
              "callers": [{"co": "0xc2", "backtrace": [{"error": "corrupt stack"}]}]}],
    graph_writer=False,
)


@pytest.mark.unit
def test_text_shows_each_node_with_its_parents_children_and_requests() -> None:
    lines = blockstate.text(GRAPH, "Block-layer state of qemu-io (7), hung").splitlines()
    assert lines[0] == "Block-layer state of qemu-io (7), hung"
    assert "bdrv_drain_all nesting: 0; graph lock writer: no" in lines
    at = lines.index("Nodes (3):")
    assert lines[at + 1:at + 10] == [
        '  "top" qcow2 /img/a.qcow2 (0x10)',  # its address, as gdb's frames show bs=0x...
        "      refcnt 1, AioContext main, in_flight 1, quiesce_counter 0",
        "      parents: backend drive0 (root), job mirror0 (main node)",
        '      child file -> "file-node" (role metadata|primary; perm consistent-read|write; '
        "shared consistent-read|write-unchanged|resize)",
        '      child backing -> "base" (role cow; perm consistent-read; '
        "shared consistent-read|write|write-unchanged|resize) frozen",
        "      request write 4096+512 (coroutine 0xc0, waiting for request 0xc1):",
        "          qemu_coroutine_switch (0x1)",  # the dump keeps every frame; the summary skips the switch
        "          qcow2_co_pwritev_part (0x2) at block/qcow2.c:10",
        "          bdrv_co_pwritev (0x3)",
    ]
    assert lines[at + 10:at + 13] == ['  "file-node" file /img/a.qcow2 (0x20)',
                                      "      refcnt 1, AioContext 0x99, in_flight 0, quiesce_counter 1",
                                      '      parents: "top" (file)']
    assert '      parents: "top" (backing), job mirror0 (target)' in lines
    assert f'  "base" raw {LONG_NAME} (0x30)' in lines  # the dump keeps the whole name; the graph shortens it


@pytest.mark.unit
def test_text_lists_backends_jobs_and_threads() -> None:
    lines = blockstate.text(GRAPH, "t").splitlines()
    at = lines.index("Block backends (2):")
    assert lines[at + 1:at + 3] == [
        '  drive0 -> "top", device attached, in_flight 1, quiesce_counter 0, queued requests 2',
        "  (anonymous) -> None, device none, in_flight None, quiesce_counter None, queued requests None"]
    at = lines.index("Jobs (1):")
    assert lines[at + 1] == '  mirror0: mirror, running, pause_count 0, ret 0, busy; nodes main node -> "top", ' \
                            'target -> "base"'
    at = lines.index("Threads:")
    assert lines[at + 1:at + 4] == ["  thread 1 (qemu-io): current coroutine 0xc0", "      parked caller 0xc2:",
                                    "          (unwinding stopped: corrupt stack)"]
    # a document without the hang facts (gdb stopped before them) says so
    assert lines[-1] == "Hang facts (thread stacks, AioContexts, job coroutines): not read (gdb stopped first)"


@pytest.mark.unit
def test_the_summary_names_the_first_request_and_its_innermost_frames() -> None:
    assert blockstate.summary(GRAPH, "qemu-io (7)") == (
        "qemu-io (7) block: 3 nodes, job mirror0 (mirror, running), 1 request in flight: write 4096+512 on node "
        '"top" <- qcow2_co_pwritev_part <- bdrv_co_pwritev')
    idle = block_state(block_node(), block_node(address="0x20", node_name=None, quiesce_counter=2))
    assert blockstate.summary(idle, "q") == "q block: 2 nodes, no request in flight, 1 quiesced"
    assert blockstate.summary(block_state(block_node()), "q") == "q block: 1 node, no request in flight"
    assert blockstate.summary({"error": "no block state from gdb (gdb wrote none)"}, "q") == \
        "q block: no block state from gdb (gdb wrote none)"


@pytest.mark.unit
def test_dot_draws_nodes_backends_and_jobs_as_shapes_with_labelled_edges() -> None:
    graph = blockstate.dot(GRAPH, "qemu-io (7)")
    lines = graph.splitlines()
    assert lines[0] == "digraph block {" and lines[-1] == "}"
    assert '  label="qemu-io (7)"; labelloc=t; rankdir=TB;' in lines
    node = {line.split(" [", 1)[0].strip(): line for line in lines if "[shape=" in line}
    assert 'fillcolor="#f28b82"' in node['"0x10"']  # a request in flight: red
    assert 'label="top\\nqcow2\\n/img/a.qcow2\\nin_flight 1, quiesced 0\\nwrite 4096+512"' in node['"0x10"']
    assert 'fillcolor="#fdd663"' in node['"0x20"']  # quiesced: yellow
    assert 'fillcolor="#ffffff"' in node['"0x30"']
    assert f'\\n...{LONG_NAME[-57:]}\\n' in node['"0x30"'] and LONG_NAME not in graph  # the file name shortened
    assert node['"0x40"'] == '  "0x40" [shape=ellipse, label="backend drive0\\nin_flight 1"];'
    assert node['"0x41"'] == '  "0x41" [shape=ellipse, label="backend (anonymous)\\nin_flight None"];'
    assert node['"0x50"'] == '  "0x50" [shape=hexagon, label="job mirror0\\nmirror, running"];'
    edges = sorted(line.strip() for line in lines if " -> " in line)
    assert edges == [
        '"0x10" -> "0x20" [label="file\\nRW/Rws"];',  # perm / shared: R consistent-read, W write, ...
        '"0x10" -> "0x30" [label="backing\\nR/RWws"];',
        '"0x40" -> "0x10" [label="root"];',  # the anonymous backend has no root: no edge
        '"0x50" -> "0x10" [style=dashed, label="main node\\n-/RWws"];',
        '"0x50" -> "0x30" [style=dashed, label="target\\n-/-"];',
    ]


@pytest.mark.unit
def test_write_keeps_text_and_graph_or_only_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blockstate, "svg", lambda graph: None)  # as without graphviz
    assert blockstate.write(GRAPH, tmp_path, "block-1", "t") == ["block-1.txt", "block-1.dot"]
    assert (tmp_path / "block-1.dot").read_text() == blockstate.dot(GRAPH, "t")
    assert (tmp_path / "block-1.txt").read_text() == blockstate.text(GRAPH, "t")
    failed = {"error": "no block state from gdb (gdb wrote none)"}
    assert blockstate.write(failed, tmp_path, "block-2", "t") == ["block-2.txt"]
    assert "no block state: no block state from gdb (gdb wrote none)" in (tmp_path / "block-2.txt").read_text()
    assert not (tmp_path / "block-2.dot").exists()
