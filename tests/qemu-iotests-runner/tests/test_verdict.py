"""run/verdict.py: check's comparison of outputs and its verdict order."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotests_run.model import Outcome
from iotests_run.run.verdict import judge, output_diff

pytestmark = pytest.mark.unit


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_trailing_whitespace_and_line_endings_are_ignored(tmp_path: Path) -> None:
    ref = write(tmp_path / "ref", b"a\nb  \nc")
    out = write(tmp_path / "out", b"a \r\nb\t\nc\n")
    assert output_diff(ref, out, "ref", "out") == ""


def test_diff_shows_changed_lines(tmp_path: Path) -> None:
    ref = write(tmp_path / "ref", b"a\nb\n")
    out = write(tmp_path / "out", b"a\nB\n\xff\n")
    diff = output_diff(ref, out, "R", "O")
    assert diff.startswith("--- R\n+++ O\n")
    assert "-b" in diff.splitlines() and "+B" in diff.splitlines() and "+\ufffd" in diff.splitlines()


def test_leading_whitespace_matters(tmp_path: Path) -> None:
    assert output_diff(write(tmp_path / "r", b" a\n"), write(tmp_path / "o", b"a\n"), "r", "o") != ""


def test_verdict_order(tmp_path: Path) -> None:
    ref = write(tmp_path / "ref", b"same\n")
    same = write(tmp_path / "same", b"same\n")
    other = write(tmp_path / "other", b"other\n")
    notrun = tmp_path / "t.notrun"
    assert judge(0, ref, same, notrun, "r", "o").outcome is Outcome.PASS
    v = judge(0, ref, other, notrun, "r", "o")
    assert (v.outcome, v.reason) == (Outcome.FAIL, "output mismatch") and "+other" in v.diff
    v = judge(3, ref, same, notrun, "r", "o")
    assert (v.outcome, v.reason) == (Outcome.FAIL, "failed, exit status 3")
    notrun.write_text("not suitable for this image format: raw\n")
    v = judge(0, ref, other, notrun, "r", "o")
    assert (v.outcome, v.reason) == (Outcome.NOT_RUN, "not suitable for this image format: raw")
    assert judge(1, ref, same, notrun, "r", "o").outcome is Outcome.FAIL  # exit status wins over .notrun
