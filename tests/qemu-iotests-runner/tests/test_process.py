"""Fake iotests run through the real runner: its own machinery, process by process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest

from support import FakeTree, run_cli, runs_by_test

pytestmark = pytest.mark.process


def test_verdicts_artifacts_and_reports(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", 'echo "hello $IMGFMT"\n', out="hello qcow2\n")
    fake_tree.add_test("002", "echo changed\n", out="original\n")
    fake_tree.add_test("003", "echo partial; exit 3\n", out="partial\n")
    fake_tree.add_test("004", 'echo "not for $IMGFMT" > "$TEST_DIR/004.notrun"\n', out="")
    fake_tree.add_test("005", "echo python\n", out=None)  # no reference output: not run, never started
    fake_tree.add_test("tests/named", 'echo "$(basename "$PWD")"\n', out="tests\n")
    results = tmp_path / "results"
    proc = run_cli(["-g", "quick", "--junit", str(tmp_path / "copy.xml"), *fake_tree.args(results)])
    assert proc.returncode == 1, proc.stderr
    runs = runs_by_test(results)
    assert {k[1]: r["outcome"] for k, r in runs.items()} == {
        "001": "pass", "002": "fail", "003": "fail", "004": "not-run", "005": "not-run", "named": "pass"}
    assert runs[("qcow2", "003")]["reason"] == "failed, exit status 3"
    assert runs[("qcow2", "004")]["reason"] == "not for qcow2"
    assert str(runs[("qcow2", "005")]["reason"]).startswith("No qualified output")
    # artifacts: kept for anything but a pass, with output, diff and the TEST_DIR
    assert runs[("qcow2", "001")]["artifacts"] is None
    assert not (results / "runs" / "qcow2-file" / "001").exists()
    kept = results / str(runs[("qcow2", "002")]["artifacts"])
    assert (kept / "002.out.bad").read_text() == "changed\n"
    assert "+changed" in (kept / "diff.txt").read_text()
    assert (kept / "scratch").is_dir() and (kept / "reproduce.sh").is_file()
    # JUnit, also copied where --junit asked
    root = ET.parse(results / "junit.xml").getroot()
    assert len(list(root.iter("testcase"))) == 6
    assert (tmp_path / "copy.xml").read_text() == (results / "junit.xml").read_text()
    summary = (results / "summary.txt").read_text()
    assert summary.rstrip().endswith("2 passed, 2 failed, 2 skipped")
    assert summary in proc.stdout


def test_reproducer_reruns_with_the_same_environment(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", 'echo "$IMGFMT $IMGOPTS"; exit 1\n', out="")
    results = tmp_path / "results"
    run_cli(["001", "-f", "vmdk", *fake_tree.args(results)])
    proc = subprocess.run(["sh", str(results / "runs/vmdk-file/001/reproduce.sh")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout == "vmdk zeroed_grain=on\n"


def test_python_tests_start_with_the_interpreter(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "import os, sys\nprint(sys.executable == os.environ['PYTHON'])\n",
                       out="True\n", python=True)
    (fake_tree.iotests / "001").chmod(0o644)  # check starts python tests with PYTHON, not by exec
    proc = run_cli(["001", *fake_tree.args(tmp_path / "r")])
    assert proc.returncode == 0, proc.stdout


def test_leftover_processes_of_a_run_are_killed(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", f"sleep 300 &\necho $! > {tmp_path}/pid\n", out="")
    proc = run_cli(["001", *fake_tree.args(tmp_path / "r")])
    assert proc.returncode == 0, proc.stdout
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "background child of the test survived the run"
        time.sleep(0.05)


def test_results_are_written_as_runs_finish_and_interrupt_is_clean(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "", out="")
    fake_tree.add_test("002", f"sleep 300 &\necho $! > {tmp_path}/pid\nsleep 300\n", out="")
    results = tmp_path / "results"
    runner = subprocess.Popen([sys.executable, "-m", "iotests_run", "-j", "2", *fake_tree.args(results)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (results / "results.json").exists() or ("001", "pass") not in {
            (r["test"], r["outcome"]) for r in json.loads((results / "results.json").read_text())["runs"]}:
        assert time.monotonic() < deadline, "the finished run never reached results.json"
        time.sleep(0.1)
    while not (tmp_path / "pid").exists():
        time.sleep(0.05)
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=20)
    assert runner.returncode == 130
    data = json.loads((results / "results.json").read_text())
    assert data["complete"] is False
    assert {r["test"]: r["outcome"] for r in data["runs"]} == {"001": "pass", "002": "interrupted"}
    ET.parse(results / "junit.xml")
    pid = int((tmp_path / "pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "0 failed" in out


def test_sigterm_interrupts_too(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", f"touch {tmp_path}/go; sleep 300\n", out="")
    runner = subprocess.Popen([sys.executable, "-m", "iotests_run", *fake_tree.args(tmp_path / "r")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (tmp_path / "go").exists():
        time.sleep(0.05)
    start = time.monotonic()
    runner.terminate()
    assert runner.wait(timeout=20) == 130
    assert time.monotonic() - start < 5
    assert os.path.exists(tmp_path / "r" / "summary.txt")


def test_retry_makes_a_fail_then_pass_flaky_and_keeps_every_attempt(fake_tree: FakeTree, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    body = f'if [ -e {seen} ]; then echo ok; else touch {seen}; echo "Failed to get write lock"; fi\n'
    fake_tree.add_test("001", body, out="ok\n")
    fake_tree.add_test("002", "echo never\n", out="ok\n")
    results = tmp_path / "results"
    proc = run_cli(["--retry", "2", *fake_tree.args(results)])
    assert proc.returncode == 1  # 002 fails every attempt
    runs = runs_by_test(results)
    flaky, failed = runs[("qcow2", "001")], runs[("qcow2", "002")]
    assert flaky["outcome"] == "flaky"
    assert str(flaky["reason"]).startswith("passed on attempt 2; attempt 1: fail: output mismatch")
    assert flaky["artifacts"] == "runs/qcow2-file/001-attempt-1"
    assert "write lock" in (results / "runs/qcow2-file/001-attempt-1/diff.txt").read_text()
    assert failed["outcome"] == "fail" and "attempt 3" in str(failed["reason"])
    for kept in ("002-attempt-1", "002-attempt-2", "002"):
        assert (results / "runs/qcow2-file" / kept / "002.out.bad").read_text() == "never\n"
    assert "Flaky" in proc.stdout
    root = ET.parse(results / "junit.xml").getroot()
    names = [(c.get("classname"), c.get("name")) for c in root.iter("testcase")]
    assert sorted(names) == [("iotests.qcow2-file", "001"), ("iotests.qcow2-file", "002")]  # unique, even with retries

    (tmp_path / "seen").unlink()
    fake_tree.add_test("002", "echo ok\n", out="ok\n")
    assert run_cli(["--retry", "1", *fake_tree.args(results)]).returncode == 0
    (tmp_path / "seen").unlink()
    assert run_cli(["--retry", "1", "--strict-flaky", *fake_tree.args(results)]).returncode == 1


def test_last_failed_and_quarantine(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fake_tree.add_test("002", f"echo run >> {tmp_path}/002-runs; echo bad\n", out="ok\n")
    (fake_tree.iotests / "002.out.raw").write_text("bad\n")  # passes on raw
    results = tmp_path / "results"
    assert run_cli(["-f", "qcow2,raw", *fake_tree.args(results)]).returncode == 1
    proc = run_cli(["--last-failed", *fake_tree.args(results)])
    assert proc.returncode == 1
    assert set(runs_by_test(results)) == {("qcow2", "002")}  # only what failed, on its format
    assert (tmp_path / "002-runs").read_text().count("run") == 3
    quarantine = tmp_path / "quarantine"
    quarantine.write_text("# known flaky\n002 qcow2-file\n")
    proc = run_cli(["--quarantine", str(quarantine), *fake_tree.args(results)])
    assert proc.returncode == 0
    assert "Quarantined (reported, not failing the job): qcow2-file 002" in proc.stdout
    assert proc.stdout.rstrip().endswith("1 passed, 1 failed, 0 skipped")
    quarantine.write_text("002 qcow2-file extra words\n")
    bad = run_cli(["--quarantine", str(quarantine), *fake_tree.args(results)])
    assert bad.returncode == 2 and "quarantine:1" in bad.stderr
    empty = tmp_path / "empty-results"
    bad = run_cli(["--last-failed", *fake_tree.args(empty)])
    assert bad.returncode == 2 and "--last-failed: no results.json in" in bad.stderr


def test_patchew_script_puts_the_summary_first(fake_tree: FakeTree, tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[3] / "tools" / "patchew" / "run"
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fake_tree.add_test("002", "printf 'changed \\033[31mred\\033[0m\\n'\n", out="original\n")
    env = dict(os.environ, IOTESTS_RESULTS=str(tmp_path / "results"), PYTHON=sys.executable)
    proc = subprocess.run([str(script), str(fake_tree.source), str(fake_tree.build), "qcow2"], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.startswith("iotests-run ")
    summary, _, diffs = proc.stdout.partition("=== qcow2-file/002/diff.txt ===")
    assert summary.rstrip().endswith("1 passed, 1 failed, 0 skipped")
    assert "+changed [31mred[0m" in diffs and "\x1b" not in proc.stdout  # no escape sequence reaches the mail
    # no coverage map where one is named: the full run, said in one line
    nomap = subprocess.run([str(script), str(fake_tree.source), str(fake_tree.build), "qcow2"], capture_output=True,
                           env=dict(env, IOTESTS_COVERAGE_MAP=str(tmp_path / "none.gz"), IOTESTS_AFFECTED_BY="HEAD"),
                           text=True, cwd=tmp_path)
    assert nomap.returncode == 1 and nomap.stdout.startswith(f"(no coverage map at {tmp_path / 'none.gz'}")
    broken = subprocess.run([str(script), str(fake_tree.source), str(tmp_path / "nobuild")], env=env,
                            capture_output=True, text=True, cwd=tmp_path)
    assert broken.returncode == 2
    expected = f"iotests-run: QEMU build folder does not exist: {tmp_path / 'nobuild'}"
    assert broken.stdout.strip().splitlines() == [expected]


def test_iotests_modules_get_bytecode_once_unless_python_is_told_not_to(fake_tree: FakeTree, tmp_path: Path) -> None:
    helper = fake_tree.iotests / "helper.py"
    helper.write_text("GREETING = 'hello'\n")
    fake_tree.add_test("001", "import helper\nprint(helper.GREETING)\n", out="hello\n", python=True)
    cache = fake_tree.iotests / "__pycache__"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    quiet = run_cli(fake_tree.args(tmp_path / "a"), env=dict(env, PYTHONDONTWRITEBYTECODE="1"))
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert not cache.exists()  # the user's wish holds
    proc = run_cli(fake_tree.args(tmp_path / "b"), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [p.name.split(".")[0] for p in cache.glob("*.pyc")] == ["helper"]  # written in the tree, as check's
