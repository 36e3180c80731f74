"""--repeat and --until-fail (plan/repeats.py) through the real runner."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from support import FakeTree, run_cli

pytestmark = pytest.mark.process


def counting_test(counter: Path, fails_when: str, extra: str = "") -> str:
    """A test whose n-th start (counted across copies, under a lock) fails when `fails_when` holds for n."""
    return (f'n=$(flock {counter} sh -c \'n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}; '
            f'echo $n\')\n{extra}if [ $(( {fails_when} )) -ne 0 ]; then echo "bad $n"; else echo ok; fi\n')


def test_repeat_counts_failures_with_an_interval_and_keeps_only_the_first_failing_copies(
        fake_tree: FakeTree, tmp_path: Path) -> None:
    from iotests_run.plan.repeats import wilson

    fake_tree.add_test("001", counting_test(tmp_path / "count", "n % 4 == 0"), out="ok\n")  # exactly 1 in 4
    results = tmp_path / "results"
    proc = run_cli(["001", "--repeat", "40", "--keep-failures", "3", *fake_tree.args(results)])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads((results / "results.json").read_text())
    copies = [r for r in data["runs"] if r["test"] == "001"]
    assert sorted(r["copy"] for r in copies) == list(range(1, 41))
    assert sum(r["outcome"] == "fail" for r in copies) == 10
    tally = data["repeats"][0]
    assert (tally["attempts"], tally["failed"], tally["failures"]) == (40, 10, {"fail": 10})
    lo, hi = tally["interval_95"]
    assert lo < 0.25 < hi and (lo, hi) == tuple(round(x, 4) for x in wilson(10, 40))
    kept = sorted(p.name for p in (results / "runs" / "qcow2-file").iterdir())
    assert len(kept) == 3 and all(k.startswith("001-copy-") for k in kept)  # the first 3 failing copies only
    assert "qcow2-file 001: 40 runs, 10 failed (25.0%)" in proc.stdout
    assert "40 attempts, 10 failed (25.0%, 95% interval" in (results / "summary.txt").read_text()
    cases = list(ET.parse(results / "junit.xml").getroot().iter("testcase"))
    assert len(cases) == 1 and "10 failed" in (cases[0].find("failure").get("message") or "")  # type: ignore[union-attr]
    assert wilson(0, 20)[0] == 0.0 and 0.1 < wilson(0, 20)[1] < 0.2  # 0 of N: still an upper bound


def test_until_fail_stops_at_the_first_failure_and_leaves_nothing(fake_tree: FakeTree, tmp_path: Path) -> None:
    marker = f"until-{tmp_path.name}"
    fake_tree.add_test("001", counting_test(tmp_path / "count", "n == 3", extra="sleep 1\n"), out="ok\n")
    results = tmp_path / "results"
    env = dict(os.environ, UNTIL_MARKER=marker)
    proc = run_cli(["001", "--repeat", "50", "--until-fail", "-j", "4", *fake_tree.args(results)], env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    copies = json.loads((results / "results.json").read_text())["runs"]
    assert [r["outcome"] for r in copies].count("fail") == 1
    assert "interrupted" not in {r["outcome"] for r in copies}  # stopped copies are dropped, not reported
    assert len(copies) < 20  # it stopped: far fewer than 50 ran
    assert int((tmp_path / "count").read_text()) < 20
    from test_supervision import marker_processes

    assert marker_processes(marker) == []
