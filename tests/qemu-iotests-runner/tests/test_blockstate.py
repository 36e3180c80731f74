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

