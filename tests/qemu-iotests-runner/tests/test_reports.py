from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.plan.planner import costs, longest_first, matrix
from iotests_run.report.junit import junit_xml
from iotests_run.report.results_json import results_json
from iotests_run.report.summary import closing_line, summary_text
from iotests_run.report.tap import tap_line
from iotests_run.results.meta import Meta

pytestmark = pytest.mark.unit


def case(key: str) -> TestCase:
    return TestCase(key=key, path=Path("/src/tests/qemu-iotests") / key, groups=frozenset({"quick"}))


def result(key: str, outcome: Outcome, fmt: str = "qcow2", **kw: object) -> Result:
    return Result(Run(case(key), fmt, "file"), outcome, **kw)  # type: ignore[arg-type]


RESULTS = [
    result("001", Outcome.PASS, duration_s=1.5),
    result("002", Outcome.FAIL, reason="output mismatch", diff="--- a\n+++ b\n-x\n+y\x01",
           artifacts="runs/qcow2-file/002", duration_s=2.0, output_tail="out\x00put"),
    result("tests/named", Outcome.NOT_RUN, reason="not suitable for this image format: qcow2"),
    result("001", Outcome.PASS, fmt="raw", duration_s=0.5),
    result("003", Outcome.INTERRUPTED, reason="interrupted by the user"),
]


def test_junit_cases_as_gitlab_reads_them() -> None:
    root = ET.fromstring(junit_xml(RESULTS))
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert len(cases) == 5
    failed = cases[("iotests.qcow2-file", "002")]
    assert failed.get("file") == "tests/qemu-iotests/002"
    assert failed.get("time") == "2.000000"
    failure = failed.find("failure")
    assert failure is not None and failure.text is not None
    assert failure.text.startswith("output mismatch\n--- a")
    assert "+y\ufffd" in failure.text and "artifacts: runs/qcow2-file/002" in failure.text
    skipped = cases[("iotests.qcow2-file", "named")].find("skipped")
    assert skipped is not None and skipped.get("message") == "not suitable for this image format: qcow2"
    assert cases[("iotests.raw-file", "001")].find("failure") is None
    assert cases[("iotests.qcow2-file", "003")].find("error") is not None


def test_junit_text_is_bounded() -> None:
    huge = result("004", Outcome.FAIL, reason="output mismatch", diff="x" * 10_000_000)
    assert len(junit_xml([huge])) < 200_000


def test_junit_is_bounded_in_total_not_only_per_run() -> None:
    """660 failing runs with 1 MB diffs (qcow2+raw+qed quick all failing) stay under GitLab's 30 MB."""
    diff = "+" + "y" * 1_000_000
    many = [result(f"{i:03}", Outcome.FAIL, fmt=fmt, reason="output mismatch", diff=diff, output_tail="o" * 4096)
            for fmt in ("qcow2", "raw", "qed") for i in range(220)]
    xml = junit_xml(many)
    assert len(xml.encode()) < 20_000_000
    assert len(ET.fromstring(xml).findall(".//failure")) == 660
    few = ET.fromstring(junit_xml(many[:3])).find(".//failure")
    assert few is not None and len(few.text or "") > 60_000  # a few failures still get their full share


def test_control_characters_never_reach_tap_or_the_summary() -> None:
    nasty = result("005", Outcome.NOT_RUN, reason="skip\nok 99 forged\x1b]0;title\x07\x1b[2J # SKIP")
    line = tap_line(7, nasty)
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line
    assert line.startswith("ok 7 qcow2-file 005 # SKIP skip ok 99 forged\\x1b]0;title")
    text = summary_text([nasty, result("006", Outcome.FAIL, reason="\x1b[31mred\x9b")], "t", 1.0)
    assert "\x1b" not in text and "\x9b" not in text and "\\x1b[31mred" in text


def test_results_json_contract() -> None:
    data = json.loads(results_json(RESULTS, {"complete": True}))
    assert data["complete"] is True and data["schema"] == 3
    run = next(r for r in data["runs"] if r["test"] == "002")
    assert run == {"test": "002", "format": "qcow2", "protocol": "file", "outcome": "fail",
                   "reason": "output mismatch", "duration_s": 2.0, "cpu_s": None, "artifacts": "runs/qcow2-file/002",
                   "leaked": [], "key": "002", "diagnostics": "", "attachments": [], "quarantined": False,
                   "casenotrun": "", "copy": 0, "recent": "", "started_s": None, "shard": 0, "explanation": ""}
    assert {r["outcome"] for r in data["runs"]} == {"pass", "fail", "not-run", "interrupted"}


def test_tap_lines() -> None:
    assert tap_line(1, RESULTS[0]) == "ok 1 qcow2-file 001"
    assert tap_line(2, RESULTS[1]) == "not ok 2 qcow2-file 002 # fail: output mismatch"
    assert tap_line(3, RESULTS[2]) == "ok 3 qcow2-file named # SKIP not suitable for this image format: qcow2"


def test_summary() -> None:
    text = summary_text(RESULTS, "title", 3.25)
    assert closing_line(RESULTS) == "2 passed, 1 failed, 2 skipped"
    assert text.rstrip().endswith("2 passed, 1 failed, 2 skipped")
    assert "runs/qcow2-file/002" in text and "Wall time 3.2 s" in text
    table = text.split("Failures:")[0]
    qcow2_row = next(line for line in table.splitlines() if line.startswith("qcow2-file"))
    assert qcow2_row.split() == ["qcow2-file", "1", "1", "1", "1", "4", "3.5"]


def test_matrix_and_longest_first() -> None:
    runs = matrix([case("001"), case("002")], ["qcow2", "raw"], ["file"])
    assert [r.label for r in runs] == ["qcow2-file 001", "qcow2-file 002", "raw-file 001", "raw-file 002"]
    durations = {"raw-file/002": 9.0, "raw-file/009": 1.0, "qcow2-file/001": 0.1, "qcow2-file/009": 5.0}
    ordered = longest_first(runs, costs(runs, durations))
    # unknown runs (raw 001, qcow2 002) are estimated at their format's median (5.0 and 2.55)
    assert [r.label for r in ordered] == ["raw-file 002", "raw-file 001", "qcow2-file 002", "qcow2-file 001"]


def test_shards_are_disjoint_complete_and_balanced() -> None:
    from iotests_run.plan.planner import Shard, split

    runs = matrix([case(f"{i:03}") for i in range(1, 61)], ["qcow2", "raw"], ["file"])
    cost = {r: float((int(r.test.key) * 7) % 13 + 0.5) for r in runs}
    for total in (1, 2, 3, 5):
        shards = split(runs, cost, total)
        flat = [r for s in shards for r in s]
        assert sorted(r.label for r in flat) == sorted(r.label for r in runs)
        assert len(set(flat)) == len(flat)
        loads = [sum(cost[r] for r in s) for s in shards]
        assert max(loads) <= 1.2 * (sum(loads) / total)
        assert split(list(reversed(runs)), cost, total) == shards  # same on every machine
    free = {r: 0.0 for r in matrix([case(f"{i:03}") for i in range(100, 140)], ["qed"], ["file"])}
    shards = split([*runs, *free], {**cost, **free}, 4)
    assert max(sum(r in free for r in s) for s in shards) - min(sum(r in free for r in s) for s in shards) <= 1
    assert Shard.parse("2/4") == Shard(2, 4)
    for bad in ("0/4", "5/4", "x", "1/0"):
        with pytest.raises(Exception, match="bad shard"):
            Shard.parse(bad)


def test_unknown_runs_get_the_median_of_their_format() -> None:
    from iotests_run.plan.planner import estimate, estimator

    durations = {"qcow2-file/001": 1.0, "qcow2-file/002": 3.0, "qcow2-file/003": 8.0, "raw-file/001": 0.5}
    medians = estimator(durations)
    assert estimate(Run(case("009"), "qcow2", "file"), durations, medians) == 3.0
    assert estimate(Run(case("002"), "qcow2", "file"), durations, medians) == 3.0
    assert estimate(Run(case("009"), "qed", "file"), durations, medians) == 1.75


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


def test_a_run_that_passed_last_time_is_a_hang_after_a_few_times_its_duration(tmp_path: Path) -> None:
    from iotests_run.plan import history
    from iotests_run.run.invocation import LimitOptions, limits_for

    path = tmp_path / "durations.json"
    quick, slow, broke, new = (matrix([case(n)], ["qcow2"], ["file"])[0] for n in ("001", "002", "003", "004"))
    history.save(path, "t", [Result(quick, Outcome.PASS, duration_s=0.7), Result(slow, Outcome.PASS, duration_s=6.0),
                             Result(broke, Outcome.PASS, duration_s=0.5)])
    history.save(path, "t", [Result(broke, Outcome.FAIL, duration_s=0.2)])
    passed = history.last_passed(path, "t")
    assert passed == {"qcow2-file/001": 0.7, "qcow2-file/002": 6.0}  # 003 failed last time

    def hang(run: Run, factor: float = 5, hang_timeout: float = 120, multiplier: float = 1) -> tuple[float, str]:
        limits = limits_for(LimitOptions(600, multiplier, hang_timeout, 3, factor, passed))(run)
        sooner = limits.sooner_hang
        return (sooner.after_s, sooner.basis) if sooner else (limits.hang_timeout_s, "--hang-timeout")

    assert hang(quick) == (10.0, "--hang-factor 5 x 0.7 s, its last passing run")  # never under the floor
    assert hang(slow) == (30.0, "--hang-factor 5 x 6 s, its last passing run")
    assert hang(slow, multiplier=2) == (60.0, "--hang-factor 5 x 6 s, its last passing run")
    assert hang(slow, hang_timeout=20) == (20, "--hang-timeout")  # at most --hang-timeout
    assert hang(broke) == hang(new) == (120, "--hang-timeout")  # no passing run to go by
    assert hang(quick, factor=0) == (120, "--hang-timeout")


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


def test_history_saves_of_two_invocations_both_land(tmp_path: Path) -> None:
    """Each save re-reads the file under a lock: a run that loaded it earlier does not drop another's durations."""
    from iotests_run.plan import history

    path = tmp_path / "durations.json"
    a, b = (matrix([case(n)], ["qcow2"], ["file"])[0] for n in ("001", "002"))
    history.save(path, "t", [Result(a, Outcome.PASS, duration_s=1.0)])
    history.save(path, "t", [Result(b, Outcome.PASS, duration_s=2.0)])
    assert history.load(path, "t") == ({"qcow2-file/001": 1.0, "qcow2-file/002": 2.0}, None)


def test_result_files_follow_finished_runs_within_a_second(tmp_path: Path) -> None:
    """Runs finishing in a burst rewrite the files once, not once each; nothing waits past a tick."""
    import io

    from iotests_run.report.progress import Progress
    from iotests_run.report.writer import WRITE_EVERY_S, Reporter

    now = [10.0]
    reporter = Reporter(tmp_path, None, Meta(complete=False), Progress(9, io.StringIO(), live=False), False, [],
                        clock=lambda: now[0])

    def written() -> list[str]:
        return [r["test"] for r in json.loads((tmp_path / "results.json").read_text())["runs"]]

    reporter.finished(result("001", Outcome.PASS))  # the first one goes at once
    assert written() == ["001"]
    for key in ("002", "003", "004"):
        now[0] += WRITE_EVERY_S / 10
        reporter.finished(result(key, Outcome.PASS))
    assert written() == ["001"]  # the burst waits for the next tick ...
    reporter.tick([])
    assert written() == ["001", "002", "003", "004"]
    assert [c.get("name") for c in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")] == \
        ["001", "002", "003", "004"]
    now[0] += WRITE_EVERY_S / 10
    reporter.finished(result("005", Outcome.PASS))
    assert "005" not in written()
    now[0] += WRITE_EVERY_S
    reporter.finished(result("006", Outcome.PASS))  # ... or for a run that ends a second after the last write
    assert written()[-2:] == ["005", "006"]
    inode = (tmp_path / "results.json").stat().st_ino  # a rewrite replaces the file
    reporter.tick([])  # nothing new: nothing rewritten
    assert (tmp_path / "results.json").stat().st_ino == inode


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
