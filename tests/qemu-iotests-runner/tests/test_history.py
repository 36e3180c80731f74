"""plan/history.py: durations and recent outcomes per tree, saved under a lock, read as untrusted input."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from iotests_run.cli.main import main as cli_main
from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.plan import history
from iotests_run.plan.planner import matrix
from support import FakeTree, case, run_cli, runs_by_test


def _run(key: str = "041") -> Run:
    return Run(TestCase(key, Path("/x") / key, frozenset()), "qcow2", "file")


@pytest.mark.unit
def test_a_runner_or_machine_error_is_not_remembered_as_the_test_failing(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    history.save(path, "t", [Result(_run(), Outcome.ERROR, "runner error: OSError(24, 'Too many open files')",
                                    duration_s=0.5)])
    history.save(path, "t", [Result(_run(), Outcome.FAIL, "output mismatch", duration_s=3.0)])
    past = history.recent(path, "t")["qcow2-file/041"]
    assert past.outcomes == "f" and past.failed == 1  # the error left no letter, and no duration
    assert history.load(path, "t")[0] == {"qcow2-file/041": 3.0}
    assert Outcome.ERROR.is_failure and not Outcome.ERROR.ran_to_its_end


@pytest.mark.unit
def test_a_history_reached_through_a_link_is_saved_at_its_target(tmp_path: Path) -> None:
    target = tmp_path / "shared" / "durations.json"
    target.parent.mkdir()
    link = tmp_path / "durations.json"
    link.symlink_to(target)
    history.save(link, "t", [Result(_run(), Outcome.PASS, duration_s=2.0)])
    assert link.is_symlink() and history.load(target, "t")[0] == {"qcow2-file/041": 2.0}


@pytest.mark.unit
def test_strings_from_a_history_are_never_printed_raw(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"trees": {"t": {"used": 1, "durations": {}, "outcomes": {
        "qcow2-file/041": "ff", "qcow2-file/\x1b]0;pwned\x07x": "f"},
        "last_failure": {"qcow2-file/041": "\x1b[2J2026-01-01"}}}}))
    past = history.recent(path, "t")
    assert past["qcow2-file/041"].last_failure is None  # not a stamp save writes
    report = history.flaky_report(past)
    assert "\x1b" not in report and "\x07" not in report and "\\x1b" in report


@pytest.mark.unit
@pytest.mark.process
def test_the_default_history_is_not_called_the_history_option(fake_tree: FakeTree, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IOTESTS_RUN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "durations.json").write_text("my notes\n")
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    assert cli_main([*fake_tree.args(tmp_path / "r"), "--list"]) == 2
    err = capsys.readouterr().err
    assert "--history " not in err.replace("--history FILE", "") and "the duration history (the default" in err
    assert (tmp_path / "cache" / "durations.json").read_text() == "my notes\n"


@pytest.mark.process
def test_failures_say_how_often_they_failed_here_recently(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo bad\n", out="good\n")
    fake_tree.add_test("002", "echo ok\n", out="ok\n")
    results, hist = tmp_path / "results", tmp_path / "history.json"
    args = [*fake_tree.args(results), "--history", str(hist)]
    first = run_cli([*args, "--tap"])
    assert "# first failure recorded (no earlier run on this tree)" in first.stdout, first.stdout
    second = run_cli(args)
    assert second.returncode == 1
    assert "failed 1 of the last 1 runs on this tree" in (results / "summary.txt").read_text()
    run = runs_by_test(results)[("qcow2", "001")]
    assert run["recent"] == "failed 1 of the last 1 runs on this tree"
    case = next(c for c in ET.parse(results / "junit.xml").getroot().iter("testcase") if c.get("name") == "001")
    assert "failed 1 of the last 1 runs on this tree" in (case.findtext("failure") or "")
    report = run_cli([*args, "--flaky-report"])
    assert report.returncode == 0, report.stderr
    lines = [line for line in report.stdout.splitlines() if "qcow2-file" in line]
    assert len(lines) == 1 and "001" in lines[0] and "100.0%" in lines[0] and "2 fail" in lines[0], report.stdout


@pytest.mark.unit
def test_history_is_kept_per_tree_and_bounded(tmp_path: Path) -> None:
    from iotests_run.plan import history

    path = tmp_path / "durations.json"
    old_tree = history.tree_identity("7.2.0", ["001", "041"])
    new_tree = history.tree_identity("10.0.0", ["001", "041"])
    fake = history.tree_identity("7.2.0", ["001"])  # same version, other tests: a fake tree in a test suite
    assert len({old_tree, new_tree, fake}) == 3
    assert history.tree_identity("7.2.0", ["041", "001"]) == old_tree  # wherever the tree lies
    run = matrix([case("041")], ["qcow2"], ["file"])[0]
    history.save(path, old_tree, [Result(run, Outcome.PASS, duration_s=40.0)])
    history.save(path, fake, [Result(run, Outcome.PASS, duration_s=0.03)])
    assert history.load(path, old_tree) == ({"qcow2-file/041": 40.0}, None)  # the fake tree did not overwrite it
    assert history.load(path, new_tree) == ({}, None)
    for i in range(history.MAX_TREES + 3):
        history.save(path, f"tree {i}", [])
    assert history.load(path, old_tree) == ({}, None)  # the least recently used trees are dropped
    assert len(json.loads(path.read_text())["trees"]) == history.MAX_TREES


@pytest.mark.unit
def test_history_refuses_a_file_that_is_not_one_and_ignores_bad_durations(tmp_path: Path) -> None:
    from iotests_run.errors import UsageError
    from iotests_run.plan import history

    run = matrix([case("041")], ["qcow2"], ["file"])[0]
    for text in ("{not json", "my thesis\n", '{"other": 1}', "[1, 2]", "[" * 100_000):
        path = tmp_path / "notes.txt"
        path.write_text(text)
        with pytest.raises(UsageError, match="not an iotests-run duration history"):
            history.check_usable(path)
        history.save(path, "tree", [Result(run, Outcome.PASS, duration_s=4.0)])
        assert path.read_text() == text  # never overwritten
    with pytest.raises(UsageError, match="not an iotests-run duration history"):
        history.check_usable(tmp_path)  # a folder
    empty = tmp_path / "empty.json"
    empty.write_text("")
    history.check_usable(empty)  # mktemp's empty file is fine
    history.check_usable(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"trees": {"t": {"used": 1, "durations": {"qcow2-file/041": NaN, "qcow2-file/001": 2}}}}')
    history.check_usable(bad)
    durations, warning = history.load(bad, "t")
    assert durations == {} and warning is not None and "not all durations are finite" in warning
    history.save(bad, "t", [Result(run, Outcome.PASS, duration_s=4.0)])
    assert history.load(bad, "t") == ({"qcow2-file/041": 4.0}, None)  # the bad entry gave way


@pytest.mark.unit
def test_history_saves_of_two_invocations_both_land(tmp_path: Path) -> None:
    """Each save re-reads the file under a lock: a run that loaded it earlier does not drop another's durations."""
    from iotests_run.plan import history

    path = tmp_path / "durations.json"
    a, b = (matrix([case(n)], ["qcow2"], ["file"])[0] for n in ("001", "002"))
    history.save(path, "t", [Result(a, Outcome.PASS, duration_s=1.0)])
    history.save(path, "t", [Result(b, Outcome.PASS, duration_s=2.0)])
    assert history.load(path, "t") == ({"qcow2-file/001": 1.0, "qcow2-file/002": 2.0}, None)


@pytest.mark.unit
def test_the_history_remembers_recent_outcomes_per_run(tmp_path: Path) -> None:
    from iotests_run.plan import history

    path = tmp_path / "durations.json"
    run = matrix([case("312")], ["qcow2"], ["file"])[0]
    for outcome in (Outcome.PASS, Outcome.FAIL, Outcome.PASS, Outcome.INTERRUPTED, Outcome.FLAKY):
        history.save(path, "t", [Result(run, outcome, duration_s=1.0)])
    past = history.recent(path, "t")["qcow2-file/312"]
    assert (past.outcomes, past.failed) == ("pfpy", 2)  # interrupted runs are not remembered
    assert past.last_failure is not None
    failure = history.with_past(Result(run, Outcome.FAIL), {"qcow2-file/312": past})
    assert failure.recent == "failed 2 of the last 4 runs on this tree"
    assert history.with_past(Result(run, Outcome.FAIL), {}).recent == \
        "first failure recorded (no earlier run on this tree)"
    assert history.with_past(Result(run, Outcome.PASS), {"qcow2-file/312": past}).recent == ""
    copies = [Result(Run(case("312"), "qcow2", "file", copy=k), Outcome.PASS, duration_s=1.0) for k in range(1, 61)]
    history.save(path, "t", copies)
    assert history.recent(path, "t")["qcow2-file/312"].outcomes == "p" * history.RECENT  # bounded
    report = history.flaky_report({"qcow2-file/312": past, "qcow2-file/001": history.Recent("ppp")})
    assert "312" in report and "50.0%" in report and "1 fail, 1 flaky" in report and " 001 " not in report
    assert history.flaky_report({}).startswith("No run failed")
