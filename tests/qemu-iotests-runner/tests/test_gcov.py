"""affected/gcov.py: gcc's notes and counters of a real gcc --coverage build."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from iotests_run.affected.coverage_map import Span, load
from iotests_run.affected.gcov import read_counts, read_notes
from iotests_run.affected.recorder import Recorder, gcov_environment
from support import FAKE_C, gcov_binary, needs_gcc


@pytest.mark.unit
@needs_gcc
def test_gcc_notes_and_counters_say_which_functions_ran(tmp_path: Path) -> None:
    src = tmp_path / "src" / "block" / "fake.c"
    src.parent.mkdir(parents=True)
    src.write_text(FAKE_C)
    binary = gcov_binary(src, tmp_path / "build")
    notes = read_notes(next((tmp_path / "build").glob("*.gcno")))
    spans = {f.name: (f.start, f.end) for f in notes.functions}
    assert spans == {"grow": (4, 7), "shrink": (10, 16), "nothing": (18, 18), "main": (20, 34)}
    prefix = tmp_path / "box"
    subprocess.run([str(binary), "grow"], env=gcov_environment(prefix), check=True, capture_output=True)
    (counts,) = prefix.rglob("*.gcda")
    by_name = {f.ident: f.name for f in notes.functions}
    ran = {by_name[i]: state for i, state in read_counts(counts).items()}
    assert ran == {"grow": True, "shrink": False, "nothing": True, "main": True}

    recorder = Recorder(tmp_path / "src", tmp_path / "build")
    recorder.collect("qcow2-file/001", prefix)
    assert recorder.executed == {"qcow2-file/001": {("block/fake.c", "grow"), ("block/fake.c", "nothing"),
                                                    ("block/fake.c", "main")}}
    cmap = recorder.save(tmp_path / "map.json.gz", "QEMU 7.2.0 tests:x")
    again = load(tmp_path / "map.json.gz")
    assert again.files == {"block/fake.c": [Span("grow", 4, 7), Span("shrink", 10, 16), Span("nothing", 18, 18),
                                            Span("main", 20, 34)]}
    assert again.runs == cmap.runs and {again.table()[i][1].name for i in again.runs["qcow2-file/001"]} == \
        {"grow", "nothing", "main"}
    # a second recording of other runs keeps the first one's
    recorder2 = Recorder(tmp_path / "src", tmp_path / "build")
    recorder2.executed["qcow2-file/002"] = {("block/fake.c", "shrink")}
    assert sorted(recorder2.save(tmp_path / "map.json.gz", "QEMU 7.2.0 tests:x").runs) == \
        ["qcow2-file/001", "qcow2-file/002"]
