"""plan/planner.py: the format x protocol matrix, longest-first order, shards, --list."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotests_run.model import Run
from iotests_run.plan.planner import costs, longest_first, matrix
from support import FakeTree, case, run_cli


@pytest.mark.process
def test_list_prints_the_plan_and_starts_nothing(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", f"touch {tmp_path}/started\n", out="")
    fake_tree.add_test("002", f"_supported_fmt qcow2\ntouch {tmp_path}/started\n", out="")
    proc = run_cli(["--list", "-f", "qcow2,raw", *fake_tree.args(tmp_path / "results")])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "001\tqcow2\tfile\trun", "002\tqcow2\tfile\trun",
        "001\traw\tfile\trun", "002\traw\tfile\tskip: not suitable for this image format: raw"]
    assert not (tmp_path / "started").exists() and not (tmp_path / "results").exists()


@pytest.mark.unit
def test_matrix_and_longest_first() -> None:
    runs = matrix([case("001"), case("002")], ["qcow2", "raw"], ["file"])
    assert [r.label for r in runs] == ["qcow2-file 001", "qcow2-file 002", "raw-file 001", "raw-file 002"]
    durations = {"raw-file/002": 9.0, "raw-file/009": 1.0, "qcow2-file/001": 0.1, "qcow2-file/009": 5.0}
    ordered = longest_first(runs, costs(runs, durations))
    # unknown runs (raw 001, qcow2 002) are estimated at their format's median (5.0 and 2.55)
    assert [r.label for r in ordered] == ["raw-file 002", "raw-file 001", "qcow2-file 002", "qcow2-file 001"]


@pytest.mark.unit
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


@pytest.mark.unit
def test_unknown_runs_get_the_median_of_their_format() -> None:
    from iotests_run.plan.planner import estimate, estimator

    durations = {"qcow2-file/001": 1.0, "qcow2-file/002": 3.0, "qcow2-file/003": 8.0, "raw-file/001": 0.5}
    medians = estimator(durations)
    assert estimate(Run(case("009"), "qcow2", "file"), durations, medians) == 3.0
    assert estimate(Run(case("002"), "qcow2", "file"), durations, medians) == 3.0
    assert estimate(Run(case("009"), "qed", "file"), durations, medians) == 1.75
