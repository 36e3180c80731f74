"""report/tap.py: a TAP line per run, and --tap through the real runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotests_run.report.tap import tap_line
from support import RESULTS, FakeTree, run_cli


@pytest.mark.process
def test_tap_output(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "", out="")
    fake_tree.add_test("002", "echo x\n", out="")
    proc = run_cli(["--tap", *fake_tree.args(tmp_path / "r")])
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("#")]  # comments: recent history
    assert lines[0] == "TAP version 13"
    assert lines[-1] == "1..2"
    assert sorted(lines[1:-1]) == ["not ok 2 qcow2-file 002 # fail: output mismatch", "ok 1 qcow2-file 001"] or \
        sorted(lines[1:-1]) == ["not ok 1 qcow2-file 002 # fail: output mismatch", "ok 2 qcow2-file 001"]
    assert "passed" in proc.stderr


@pytest.mark.unit
def test_tap_lines() -> None:
    assert tap_line(1, RESULTS[0]) == "ok 1 qcow2-file 001"
    assert tap_line(2, RESULTS[1]) == "not ok 2 qcow2-file 002 # fail: output mismatch"
    assert tap_line(3, RESULTS[2]) == "ok 3 qcow2-file named # SKIP not suitable for this image format: qcow2"
