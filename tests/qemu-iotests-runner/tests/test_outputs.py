"""A test's output of any size is judged, diffed and kept in bounded memory, with check's verdicts (outputs.py)."""

from __future__ import annotations

import difflib
import json
import time
import tracemalloc
from pathlib import Path

import pytest

from iotests_run import outputs
from iotests_run.model import Outcome
from iotests_run.outputs import (
    DIFF_BYTES,
    KEEP_OUTPUT_BYTES,
    REPORT_DIFF_CHARS,
    capped_diff,
    keep_head_and_tail,
    outputs_agree,
    reference_lines,
    size_and_lines,
)
from iotests_run.results.folder import DIFF_READ_BYTES, Recorded
from iotests_run.run.verdict import run_verdict
from support import FakeTree, run_cli_measured


def _whole_lines(path: Path) -> list[str]:
    """How the verdict read outputs before: every line, whole (check's own reading)."""
    with path.open(encoding="utf-8", errors="replace") as f:
        return [line.rstrip() for line in f]


AGREEMENT_CASES = [
    (b"a\nb\n", b"a\nb\n"), (b"a\nb", b"a\nb\n"), (b"a\n", b"a \t\r\n"), (b"a\n", b"a\rb\n"), (b"a\nb\n", b"a\rb\n"),
    (b"a\n", b"a\n\n"), (b"a\n\n", b"a\n"), (b"", b""), (b"", b"\n"), (b"", b"  "), (b"\n", b""), (b" a\n", b"a\n"),
    (b"a b\n", b"a  b\n"), (b"ab\n", b"a"), (b"a\n", b"ab\n"), (b"a\n", b"a\x0b\x0c\xc2\xa0\n"), (b"a\n", b"a\xff\n"),
    (b"a\xff\n", b"a\xff\n"), (b"x" * 50 + b"\n", b"x" * 50 + b" " * 70 + b"\n"), (b"x" * 50 + b"\n", b"x" * 51),
    (b"x" * 50, b"x" * 49 + b"y"), (b"a\r\n", b"a\r"), (b"a\nb\nc\n", b"a\nb\n"),
]


@pytest.mark.unit
@pytest.mark.parametrize("piece", [1, 3, 16, 65536])
@pytest.mark.parametrize(("ref", "out"), AGREEMENT_CASES)
def test_streamed_comparison_is_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int,
                                       ref: bytes, out: bytes) -> None:
    """Same verdict as comparing every whole line, whatever the piece size a line is read in."""
    monkeypatch.setattr(outputs, "PIECE_CHARS", piece)
    (tmp_path / "ref").write_bytes(ref)
    (tmp_path / "out").write_bytes(out)
    expected = _whole_lines(tmp_path / "ref") == _whole_lines(tmp_path / "out")
    assert outputs_agree(reference_lines(tmp_path / "ref"), tmp_path / "out") is expected


@pytest.mark.unit
def test_a_mismatch_is_decided_without_reading_the_rest(tmp_path: Path) -> None:
    """A first line that differs decides, even before a 64 GB line (sparse) that reading would never end."""
    (tmp_path / "ref").write_text("expected\n")
    out = tmp_path / "out"
    with out.open("wb") as f:
        f.write(b"other\n")
        f.truncate(64 << 30)
    start = time.monotonic()
    assert not outputs_agree(reference_lines(tmp_path / "ref"), out)
    assert time.monotonic() - start < 5


@pytest.mark.unit
def test_small_diffs_are_difflibs_whole(tmp_path: Path) -> None:
    (tmp_path / "ref").write_text("a\nb\nc\n")
    (tmp_path / "out").write_text("a\nB \nc\nd\n")
    diff = capped_diff(tmp_path / "ref", tmp_path / "out", "R", "O")
    whole = "\n".join(line.rstrip() for line in difflib.unified_diff(["a", "b", "c"], ["a", "B", "c", "d"], "R", "O"))
    assert (diff.text, diff.truncated) == (whole, False)


@pytest.mark.unit
def test_a_huge_output_gets_a_capped_diff_in_bounded_memory(tmp_path: Path) -> None:
    (tmp_path / "ref").write_text("hello\n")
    out = tmp_path / "out"
    with out.open("wb") as f:
        f.write(b"line\n" * 300_000)  # more lines than the diff's window
        f.truncate(256 << 20)  # and then one 254 MB line of NULs
    tracemalloc.start()
    try:
        diff = capped_diff(tmp_path / "ref", out, "R", "runs/x/out.bad")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert diff.truncated
    assert len(diff.text.encode()) <= DIFF_BYTES + 1024
    assert peak < 64 << 20, f"peak {peak >> 20} MB"
    last = diff.text.splitlines()[-1]
    assert last.startswith("diff truncated: output is 256.0 MB, 300001 lines;") and last.endswith("see runs/x/out.bad")
    assert diff.text.startswith("--- R\n+++ runs/x/out.bad\n") and "\n-hello\n+line\n" in diff.text


@pytest.mark.unit
def test_a_diff_cut_at_its_cap_shows_the_line_that_crosses_it(tmp_path: Path) -> None:
    (tmp_path / "ref").write_text("hello\n")
    (tmp_path / "out").write_text("x" * (3 << 20) + "\n")  # one line, longer than the cap
    diff = capped_diff(tmp_path / "ref", tmp_path / "out", "R", "O")
    lines = diff.text.splitlines()
    assert diff.truncated and lines[4].startswith("+xxx") and lines[4].endswith(" [line cut]")
    assert DIFF_BYTES - 100 < len(diff.text.encode()) <= DIFF_BYTES + 1024
    assert DIFF_READ_BYTES >= len(diff.text.encode())  # merge reads a capped diff.txt back whole


@pytest.mark.unit
def test_a_diff_that_differs_only_past_its_window_is_not_empty(tmp_path: Path) -> None:
    lines = "".join(f"{i}\n" for i in range(outputs.DIFF_SIDE_LINES + 5))
    (tmp_path / "ref").write_text(lines)
    (tmp_path / "out").write_text(lines + "extra\n")
    diff = capped_diff(tmp_path / "ref", tmp_path / "out", "R", "O")
    assert diff.truncated and diff.text.startswith("--- R\n+++ O\ndiff truncated: ")


@pytest.mark.unit
def test_lines_are_counted_as_universal_newlines_end_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs, "COPY_BYTES", 2)  # a \r\n split between two reads
    path = tmp_path / "out"
    path.write_bytes(b"a\r\nb\rc\n\nd")
    assert size_and_lines(path) == (9, 5) and len(_whole_lines(path)) == 5


@pytest.mark.unit
def test_a_crash_message_past_a_truncated_diff_is_still_a_crash(tmp_path: Path) -> None:
    (tmp_path / "ref").write_text("hello\n")
    out = tmp_path / "out"
    out.write_text("y\n" * 100_000 + "./common.rc: line 1: 42 Segmentation fault (core dumped) qemu-io\nhello\n")
    verdict = run_verdict(None, "", 1, tmp_path / "ref", out, tmp_path / "none.notrun", "R", "O")
    assert verdict.outcome is Outcome.CRASH and "Segmentation fault" in verdict.reason
    assert "Segmentation fault" not in verdict.diff  # only the end of the output said so


@pytest.mark.unit
def test_a_large_output_keeps_its_head_and_tail(tmp_path: Path) -> None:
    src = tmp_path / "out"
    src.write_bytes(b"H" * 1000 + b"m" * 5000 + b"T" * 1000)
    note = keep_head_and_tail(src, tmp_path / "kept", 7000, limit=2000)
    kept = (tmp_path / "kept").read_bytes()
    head, marker, tail = kept.split(b"\n")
    assert (head, tail) == (b"H" * 1000, b"T" * 1000)
    assert b"5000 bytes left out here; the output was 7000 bytes" in marker
    assert note.startswith("kept kept as its first and last")


@pytest.mark.process
def test_a_test_printing_200_mb_fails_in_bounded_memory(fake_tree: FakeTree, tmp_path: Path) -> None:
    """Before: the runner peaked at 8.4 GB and kept a 300 MB diff.txt for this test (M13)."""
    fake_tree.add_test("001", "yes | head -c 200000000\n", out="hello\n")
    results = tmp_path / "results"
    proc, peak_mb = run_cli_measured(["001", "--history", str(tmp_path / "history.json"), *fake_tree.args(results)])
    assert proc.returncode == 1, proc.stderr
    assert peak_mb < 200, f"the runner peaked at {peak_mb} MB"
    run = json.loads((results / "results.json").read_text())["runs"][0]
    assert (run["outcome"], run["reason"]) == ("fail", "output mismatch")
    kept = results / run["artifacts"]
    diff = (kept / "diff.txt").read_text()
    assert (kept / "diff.txt").stat().st_size <= DIFF_BYTES + 16 * 1024
    assert "\n-hello\n+y\n" in diff
    assert "diff truncated: output is 190.7 MB, 100000000 lines;" in diff.splitlines()[-1]
    assert (kept / "001.out.bad").stat().st_size <= KEEP_OUTPUT_BYTES + 4096
    assert "001.out.bad kept as its first and last 8.0 MB: the output was 190.7 MB" in run["diagnostics"]
    assert "diff truncated" in (results / "junit.xml").read_text()


@pytest.mark.unit
def test_a_merged_runs_diff_is_held_as_the_reports_excerpt(tmp_path: Path) -> None:
    """merge reads diff.txt back with a bounded read, and keeps in memory only what the reports show."""
    folder = tmp_path / "runs" / "qcow2-file" / "001"
    folder.mkdir(parents=True)
    (folder / "diff.txt").write_text("--- R\n+++ O\n" + "+y\n" * 400_000)  # 1.2 MB, larger than any capped diff
    record = {"test": "001", "format": "qcow2", "protocol": "file", "outcome": "fail",
              "artifacts": "runs/qcow2-file/001"}
    result = Recorded(tmp_path, {}, [record]).result(record, tmp_path, tmp_path)
    assert result.diff.startswith("--- R\n+++ O\n+y\n")
    assert len(result.diff) < REPORT_DIFF_CHARS + 100
    assert result.diff.endswith(f"[... {DIFF_READ_BYTES - REPORT_DIFF_CHARS} more characters in diff.txt]")
