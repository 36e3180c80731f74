"""tools/bench --simulate (tools/iotests_tools/simulate.py) and tools/durations-table: list scheduling on tiny
cases, check's chunks, the real planner's orders, the table regenerated from results.json files."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from iotests_run.model import Run
from support import case

REPO = Path(__file__).resolve().parents[3]


def tool(name: str) -> types.ModuleType:
    if str(REPO / "tools") not in sys.path:
        sys.path.insert(0, str(REPO / "tools"))
    return importlib.import_module(f"iotests_tools.{name}")


def runs(*seconds: float) -> tuple[list[Run], dict[Run, float]]:
    order = [Run(case(f"{i:03}"), "qcow2", "file") for i in range(1, len(seconds) + 1)]
    return order, dict(zip(order, seconds, strict=True))


def results_json(version: str, took: dict[str, float], fmt: str = "qcow2", **extra: Any) -> dict[str, Any]:
    rows = [{"test": k, "key": k, "format": fmt, "protocol": "file", "outcome": "pass", "duration_s": v, "copy": 0}
            for k, v in took.items()]
    rows.append({"test": "999", "key": "999", "format": fmt, "protocol": "file", "outcome": "not-run",
                 "duration_s": 0.0, "copy": 0})
    return {"qemu": {"version": version}, "runs": rows, **extra}


@pytest.mark.unit
def test_list_scheduling_gives_each_run_to_the_slot_that_frees_first() -> None:
    sim = tool("simulate")
    order, took = runs(1, 1, 4)
    assert sim.makespan(order, took, 2) == 5.0  # the 4 s run starts last, on a slot already 1 s in
    assert sim.makespan(order[::-1], took, 2) == 4.0  # longest first: 4 | 1+1
    assert sim.makespan(order, took, 1) == 6.0
    assert sim.makespan(order, took, 8) == 4.0  # more slots than runs
    assert sim.makespan([], {}, 3) == 0.0
    order, took = runs(3, 3, 2, 2, 2)  # the classic: greedy longest-first 7, the optimum 6
    assert sim.makespan(order, took, 2) == 7.0 and sim.floor(took, 2) == 6.0


@pytest.mark.unit
def test_checks_pool_hands_out_chunks_of_a_quarter_per_worker() -> None:
    sim = tool("simulate")
    order, took = runs(*([1.0] * 8 + [8.0]))  # 9 runs, 2 workers: chunks of ceil(9 / 8) = 2
    # chunks [1,1] x4 then [8]: the 8 s chunk starts after two chunks on one worker
    assert sim.chunked_makespan(order, took, 2) == 12.0
    assert sim.makespan(order, took, 2) == 12.0  # one at a time it is no better here: the long one is last
    order, took = runs(6, 6, 1, 1, 1, 1, 1, 1, 1)  # chunks [6,6] [1,1] [1,1] [1,1] [1]: both long ones on one worker
    assert sim.chunked_makespan(order, took, 2) == 12.0
    assert sim.makespan(order, took, 2) == 10.0  # one at a time: 6 | 6, then the seven 1 s runs


@pytest.mark.unit
def test_the_planners_orders_from_a_results_json() -> None:
    sim = tool("simulate")
    took = {"001": 1.0, "002": 9.0, "003": 2.0, "004": 8.0}
    m = sim.measured(results_json("7.2.0", took))
    assert [r.test.key for r in m.runs] == ["001", "002", "003", "004"]  # not-run 999 left out
    warm = sim.planned(m, {r.id.history_key: m.took[r] for r in m.runs}, {})
    assert [r.test.key for r in warm] == ["002", "004", "003", "001"]
    cold = sim.planned(m, {}, {"qcow2": {"002": 3.0, "004": 2.0, "001": 1.0}})  # 003 estimated at 2.8 (90th pct)
    assert [r.test.key for r in cold] == ["002", "003", "004", "001"]
    assert [r.test.key for part in sim.check_order(m) for r in part] == ["001", "002", "003", "004"]


@pytest.mark.unit
def test_the_simulated_table_names_its_tables_and_flags_one_made_from_the_same_runs() -> None:
    sim = tool("simulate")
    took = {f"{i:03}": float(i % 7 + 1) for i in range(1, 41)}
    table = {"versions": {"7.2": {"qcow2": took}, "10.0": {"qcow2": {k: 1.0 for k in took}}}}
    text = sim.simulate(results_json("7.2.0", took), [2, 4], table)
    assert "cold: the table of QEMU 10.0; cold*: the table of QEMU 7.2 (made from these very runs" in text
    rows = [line for line in text.splitlines() if line.startswith("| 2 |") or line.startswith("| 4 |")]
    assert len(rows) == 2
    cells = rows[1].split("|")
    warm, low = float(cells[7].split()[0]), float(cells[8].split()[0])
    assert low == pytest.approx(sum(took.values()) / 4) and warm >= low


@pytest.mark.unit
def test_warm_from_an_earlier_round_plans_with_its_durations() -> None:
    sim = tool("simulate")
    now = results_json("7.2.0", {"001": 1.0, "002": 1.0, "003": 4.0})
    earlier = results_json("7.2.0", {"001": 4.0, "002": 1.0, "003": 1.0})  # 001 was the long one then
    text = sim.simulate(now, [2], {}, earlier=earlier)
    assert "warm: the history of the earlier round" in text
    cells = next(line for line in text.splitlines() if line.startswith("| 2 |")).split("|")
    assert cells[7].strip() == "5.0 s"  # 001 first, 002 beside it, then 003 after 1 s: 5 s, not the 4 s floor
    assert "warm: the history of these very runs" in sim.simulate(now, [2], {})


@pytest.mark.process
def test_bench_simulate_prints_a_table_per_results_json(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results_json("10.0.13", {"001": 3.0, "002": 1.0, "003": 5.0})))
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench"), "--simulate", str(path), "--slots", "1,3"],
                          capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO / "tests" / "qemu-iotests-runner"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "| 1 | 9.0 s | 9.0 s |" in proc.stdout and "| 3 |" in proc.stdout and "| 5.0 s |" in proc.stdout
    bad = subprocess.run([sys.executable, str(REPO / "tools" / "bench"), "--simulate", str(path), "--slots", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "bad --slots" in bad.stderr


@pytest.mark.unit
def test_durations_table_is_regenerated_from_results_and_histories(tmp_path: Path) -> None:
    dt = tool("durations_table")
    a = tmp_path / "a.json"
    a.write_text(json.dumps(results_json("7.2.0", {"001": 1.04, "002": 9.0})))
    b = tmp_path / "b.json"
    b.write_text(json.dumps(results_json("7.2.1", {"001": 3.0, "002": 5.0})))
    c = tmp_path / "c.json"
    c.write_text(json.dumps(results_json("7.2.0", {"001": 2.0, "003": 0.2})))
    data = json.loads(c.read_text())
    data["runs"][1]["outcome"] = "not-run"  # 003 started and said not run: it takes that long again
    data["runs"].append({"test": "004", "key": "004", "format": "qcow2", "protocol": "file", "outcome": "timeout",
                         "duration_s": 300.0, "copy": 0})  # stopped: says nothing of its length
    c.write_text(json.dumps(data))
    history = tmp_path / "h.json"
    history.write_text(json.dumps({"trees": {"QEMU 10.0.13 tests:abc": {"durations": {
        "raw-file/040": 4.0, "raw-nbd/040": 40.0, "qcow2-file/tests/x": 0.5}}}}))
    out = tmp_path / "durations.json"
    out.write_text(json.dumps({"versions": {"8.0": {"qcow2": {"001": 7.0}}, "7.2": {"qcow2": {"old": 1.0}}}}))
    assert dt.main(["--output", str(out), str(a), str(b), str(c), str(history)]) == 0
    table = json.loads(out.read_text())
    # medians; 7.2's old entries replaced
    assert table["versions"] == {"7.2": {"qcow2": {"001": 2.0, "002": 7.0, "003": 0.2}},
                                 "8.0": {"qcow2": {"001": 7.0}},  # no input covers 8.0: kept
                                 "10.0": {"qcow2": {"tests/x": 0.5}, "raw": {"040": 4.0}}}  # nbd left out
    assert "do not edit by hand" in table["generated_by"]
