"""Fast to red: --maxfail stops a run at its Nth failure, runs that failed last time start first, and the time to
the first failure is said (summary.txt, results.json)."""

import json
from pathlib import Path

import pytest

from support import FakeTree, run_cli

pytestmark = pytest.mark.process


def _tree(fake_tree: FakeTree, failing: str, others: int = 5, sleep: float = 2.0) -> None:
    for n in range(1, others + 2):
        name = f"{n:03d}"
        if name == failing:
            fake_tree.add_test(name, "echo wrong\n", out="right\n")
        else:
            fake_tree.add_test(name, f"sleep {sleep}\necho ok\n", out="ok\n")


def test_maxfail_stops_starting_runs_and_stops_those_in_flight(fake_tree: FakeTree, tmp_path: Path) -> None:
    _tree(fake_tree, "001")
    results = tmp_path / "r"
    proc = run_cli([*fake_tree.args(results), "-j", "2", "--fixed-jobs", "--maxfail", "1", "--no-failed-first",
                    "--history", str(tmp_path / "h.json")])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads((results / "results.json").read_text())
    outcomes = {r["test"]: (r["outcome"], r["reason"]) for r in data["runs"]}
    assert outcomes["001"] == ("fail", "output mismatch")
    assert len(outcomes) == 6  # no run lost: each is reported
    stopped = {t: o for t, o in outcomes.items() if t != "001"}
    assert all(o == "interrupted" for o, _ in stopped.values()), stopped
    assert any(r.startswith("not started: --maxfail 1 reached (1 failed)") for _, r in stopped.values())
    assert data["complete"] is False and data["stopped"].startswith("--maxfail 1 reached (1 failed): 5 runs")
    summary = (results / "summary.txt").read_text()
    assert "Stopped: --maxfail 1 reached (1 failed): 5 runs stopped or not started" in summary
    assert data["wall_s"] < 6  # five runs of 2 s each on two slots would take 6 s or more


@pytest.mark.parametrize("value", ["0", "abc", "-1"])
def test_bad_maxfail_is_one_line_and_exit_2(fake_tree: FakeTree, tmp_path: Path, value: str) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    proc = run_cli([*fake_tree.args(tmp_path / "r"), "--maxfail", value])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and value in proc.stderr and "--maxfail" in proc.stderr


def test_the_first_failure_is_timed_and_said(fake_tree: FakeTree, tmp_path: Path) -> None:
    _tree(fake_tree, "003", others=2, sleep=0.1)
    results = tmp_path / "r"
    proc = run_cli([*fake_tree.args(results), "-j", "1", "--history", str(tmp_path / "h.json")])
    assert proc.returncode == 1
    data = json.loads((results / "results.json").read_text())
    first = data["first_failure"]
    assert first["run"] == "qcow2-file 003" and 0 < first["after_s"] <= data["wall_s"]
    assert f"First failure after {first['after_s']} s: qcow2-file 003" in (results / "summary.txt").read_text()
    assert "stopped" not in data and data["complete"] is True


def test_runs_that_failed_last_time_start_first(fake_tree: FakeTree, tmp_path: Path) -> None:
    _tree(fake_tree, "005", others=4, sleep=0.2)
    history = tmp_path / "h.json"
    first = run_cli([*fake_tree.args(tmp_path / "r1"), "-j", "1", "--history", str(history)])
    assert first.returncode == 1
    again = run_cli([*fake_tree.args(tmp_path / "r2"), "-j", "1", "--history", str(history)])
    assert again.returncode == 1
    assert "1 that failed last time first" in again.stdout
    runs = json.loads((tmp_path / "r2" / "results.json").read_text())["runs"]
    assert min(runs, key=lambda r: r["started_s"])["test"] == "005"
    off = run_cli([*fake_tree.args(tmp_path / "r3"), "-j", "1", "--history", str(history), "--no-failed-first"])
    runs = json.loads((tmp_path / "r3" / "results.json").read_text())["runs"]
    assert off.returncode == 1 and min(runs, key=lambda r: r["started_s"])["test"] != "005"
