"""report/summary.py: the summary table and closing line, with no control character from a test."""

from __future__ import annotations

import pytest

from iotests_run.model import Outcome
from iotests_run.report.summary import closing_line, summary_text
from iotests_run.report.tap import tap_line
from support import RESULTS, result

pytestmark = pytest.mark.unit


def test_control_characters_never_reach_tap_or_the_summary() -> None:
    nasty = result("005", Outcome.NOT_RUN, reason="skip\nok 99 forged\x1b]0;title\x07\x1b[2J # SKIP")
    line = tap_line(7, nasty)
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line
    assert line.startswith("ok 7 qcow2-file 005 # SKIP skip ok 99 forged\\x1b]0;title")
    text = summary_text([nasty, result("006", Outcome.FAIL, reason="\x1b[31mred\x9b")], "t", 1.0)
    assert "\x1b" not in text and "\x9b" not in text and "\\x1b[31mred" in text


def test_summary() -> None:
    text = summary_text(RESULTS, "title", 3.25)
    assert closing_line(RESULTS) == "2 passed, 1 failed, 2 skipped"
    assert text.rstrip().endswith("2 passed, 1 failed, 2 skipped")
    assert "runs/qcow2-file/002" in text and "Wall time 3.2 s" in text
    table = text.split("Failures:")[0]
    qcow2_row = next(line for line in table.splitlines() if line.startswith("qcow2-file"))
    assert qcow2_row.split() == ["qcow2-file", "1", "1", "1", "1", "4", "3.5"]
