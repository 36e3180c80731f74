"""Terminal progress: the live status line on a TTY, lines for CI logs, --quiet and --verbose."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotests_run.model import LiveRun, Outcome, Result, Run, TestCase
from iotests_run.report.progress import CLEAR_LINE, NORMAL, QUIET, Eta, Progress
from support import FakeTree, run_cli, tree_args


def _run(name: str) -> Run:
    return Run(TestCase(name, Path(name), frozenset({"quick"})), "qcow2", "file")


def test_eta_is_work_left_over_jobs_corrected_by_observed_speed() -> None:
    a, b, c, d = (_run(n) for n in ("001", "002", "003", "004"))
    eta = Eta({a.label: 10.0, b.label: 10.0, c.label: 20.0, d.label: 40.0}, jobs=2)
    now = 1000.0
    assert eta.seconds([], now) == pytest.approx(40.0)  # 80 s of work on 2 jobs
    eta.finished(Result(a, Outcome.PASS, duration_s=20.0))  # twice as slow as predicted
    # b is in flight for 5 s: 2 x 10 - 5 = 15 s left of it; c and d wait: 2 x 60 s
    in_flight = [LiveRun(b.label, now - 5, now)]
    assert eta.seconds(in_flight, now) == pytest.approx((15 + 120) / 2)
    eta.finished(Result(b, Outcome.INTERRUPTED))  # never counts as speed evidence
    assert eta.predicted_done == 10.0


def test_status_line_is_redrawn_in_place_and_only_notable_runs_stay() -> None:
    out = io.StringIO()
    a, b = _run("001"), _run("002")
    progress = Progress(2, out, level=NORMAL, live=True, eta=Eta({a.label: 4.0, b.label: 4.0}, 2))
    progress.tick([LiveRun(a.label, time.monotonic() - 3, 0), LiveRun(b.label, time.monotonic() - 1, 0)])
    assert out.getvalue().startswith(CLEAR_LINE + "[0/2] starting | ETA ")
    assert "running 001:3s 002:1s" in out.getvalue()
    progress.finished(Result(a, Outcome.PASS, duration_s=3.0))
    assert "pass" not in out.getvalue().replace("passed", "")  # a pass gets no line of its own
    progress.finished(Result(b, Outcome.FAIL, "output mismatch", duration_s=1.0))
    text = out.getvalue()
    assert f"{CLEAR_LINE}[2/2] FAIL" in text and "output mismatch\n" in text
    assert text.endswith("[2/2] 1 passed, 1 failed")  # status drawn again below it, without the ended runs
    progress.close()
    assert out.getvalue().endswith(CLEAR_LINE)


def test_quiet_keeps_failures_only() -> None:
    out = io.StringIO()
    progress = Progress(2, out, level=QUIET, live=True, quiet_notice_s=0)
    assert not progress.live
    progress.finished(Result(_run("001"), Outcome.PASS))
    progress.tick([LiveRun("qcow2-file 002", 0, 0)])
    progress.finished(Result(_run("002"), Outcome.HANG, "no CPU, no output for 5 s"))
    assert out.getvalue().count("\n") == 1 and "HANG" in out.getvalue()


@pytest.mark.process
def test_on_a_terminal_the_status_line_names_what_runs(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fake_tree.add_test("002", "echo bad\n", out="good\n")
    fake_tree.add_test("003", "sleep 3; echo ok\n", out="ok\n")
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "iotests_run", "-g", "quick", *fake_tree.args(tmp_path / "r")],
                            stdin=subprocess.DEVNULL, stdout=child, stderr=child, close_fds=True)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child side closed
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 1
    os.close(main)
    text = b"".join(chunks).decode()
    assert "| running 003:2s" in text  # the sleeper, named with its elapsed time
    assert "ETA " in text
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1].removeprefix("\x1b[K") for line in text.split("\n")]
    assert any(line.startswith("[") and "FAIL" in line and "002" in line for line in lines)
    assert not any(line.startswith("[") and " pass " in line for line in lines)  # passes: counted in the status only
    assert text.rstrip().endswith("2 passed, 1 failed, 0 skipped")


@pytest.mark.process
def test_quiet_and_verbose(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fake_tree.add_test("002", "echo bad\n", out="good\n")
    quiet = run_cli(["-q", "-g", "quick", *fake_tree.args(tmp_path / "q")])
    assert quiet.returncode == 1
    lines = quiet.stdout.splitlines()
    assert len(lines) == 2 and "FAIL" in lines[0] and "002" in lines[0]
    assert lines[1].startswith("1 passed, 1 failed, 0 skipped (summary: ")
    assert (tmp_path / "q" / "summary.txt").read_text().rstrip().endswith("1 passed, 1 failed, 0 skipped")
    verbose = run_cli(["-v", "-g", "quick", *fake_tree.args(tmp_path / "v")])
    after_fail = verbose.stdout.split("FAIL", 1)[1].splitlines()
    assert "    -good" in after_fail and "    +bad" in after_fail  # the diff under the failure's line
    assert any("pass" in line and "001" in line for line in verbose.stdout.splitlines())
    both = run_cli(["-q", "-v", *fake_tree.args(tmp_path / "x")])
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


@pytest.mark.process
def test_escape_sequences_from_tests_are_shown_not_obeyed(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", r"""printf 'skip\033]0;pwned\007\033[2J' > "$TEST_DIR/001.notrun"
""", out="")
    fake_tree.add_test("002", r"""printf 'bad\033[31m red\n'
""", out="good\n")
    proc = run_cli(tree_args(fake_tree, tmp_path / "r", "-v"))
    assert proc.returncode == 1
    out = proc.stdout + (tmp_path / "r" / "summary.txt").read_text()
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[31m red" in proc.stdout  # the -v diff, shown
