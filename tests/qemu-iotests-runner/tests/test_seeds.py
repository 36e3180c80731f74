"""plan/seeds.py: a cold start's durations: history, check's .last-elapsed-cache, the shipped table, an estimate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from iotests_run.plan import seeds
from iotests_run.plan.planner import costs, longest_first, matrix
from support import FakeTree, case, run_cli

IOTESTS = "/src/qemu/tests/qemu-iotests"


def write_cache(build: Path, content: str | bytes) -> Path:
    path = build / "tests" / "qemu-iotests" / seeds.CHECK_CACHE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.unit
def test_each_run_takes_the_first_source_that_knows_it() -> None:
    runs = matrix([case("001"), case("002"), case("003"), case("004")], ["qcow2"], ["file"])
    history = {"qcow2-file/001": 5.0}
    check = {"qcow2-file/001": 99.0, "qcow2-file/002": 7.0}  # 001: the history wins
    family = {"qcow2": {"001": 50.0, "002": 70.0, "003": 3.0}}  # under MIN_OVERLAP runs in common: not scaled
    s = seeds.seed(runs, history, check, family, "7.2")
    assert s.durations == {"qcow2-file/001": 5.0, "qcow2-file/002": 7.0, "qcow2-file/003": 3.0,
                           "qcow2-file/004": 6.6}  # 004: the 90th percentile of 3, 5, 7
    assert s.origin["qcow2-file/004"] == seeds.ESTIMATED
    assert s.line(runs) == ("durations: 1 history, 1 check's .last-elapsed-cache, 1 shipped table (QEMU 7.2), "
                            "1 estimated")


@pytest.mark.unit
def test_a_cold_start_orders_by_the_table_and_estimates_the_rest_by_format() -> None:
    runs = matrix([case("001"), case("002"), case("009")], ["qcow2", "raw"], ["file"])
    family = {"qcow2": {"001": 1.0, "002": 9.0}, "raw": {"001": 4.0}}
    s = seeds.seed(runs, {}, {}, family)
    ordered = longest_first(runs, costs(runs, s.durations))
    # qcow2 009 is estimated at qcow2's 90th percentile (8.2), raw's unknowns at raw's only duration (4.0)
    assert [r.label for r in ordered] == ["qcow2-file 002", "qcow2-file 009", "raw-file 001", "raw-file 002",
                                          "raw-file 009", "qcow2-file 001"]
    assert s.durations["qcow2-file/009"] == 8.2
    assert s.counts(runs) == {seeds.TABLE_SOURCE: 3, seeds.ESTIMATED: 3}


@pytest.mark.unit
def test_few_runs_known_nowhere_are_estimated_at_the_longest_so_they_start_first() -> None:
    runs = matrix([case(f"{i:03}") for i in range(1, 12)], ["qcow2"], ["file"])  # 011 is new: 1 of 11
    family = {"qcow2": {f"{i:03}": float(i) for i in range(1, 11)}}
    s = seeds.seed(runs, {}, {}, family)
    assert s.durations["qcow2-file/011"] == 10.0
    assert [r.test.key for r in longest_first(runs, costs(runs, s.durations))][:2] == ["010", "011"]
    fewer = {"qcow2": {f"{i:03}": float(i) for i in range(1, 9)}}  # 009, 010, 011 unknown: 3 of 11, too many
    assert seeds.seed(runs, {}, {}, fewer).durations["qcow2-file/011"] == 7.3  # the 90th percentile of 1..8


@pytest.mark.unit
def test_the_table_is_scaled_to_this_machine_by_the_runs_known_in_both() -> None:
    tests = [case(f"{i:03}") for i in range(1, 8)]
    runs = matrix(tests, ["qcow2"], ["file"])
    family = {"qcow2": {f"{i:03}": float(i) for i in range(1, 8)}}
    history = {f"qcow2-file/{i:03}": 2.0 * i for i in range(1, 6)}  # this machine is twice as slow
    s = seeds.seed(runs, history, {}, family)
    assert s.durations["qcow2-file/006"] == 12.0 and s.durations["qcow2-file/007"] == 14.0
    assert seeds.scale({"a": 1000.0, **{k: 1.0 for k in "bcdef"}}, {k: 1.0 for k in "abcdef"}) == 1.0  # median
    assert seeds.scale({k: 1000.0 for k in "abcde"}, {k: 1.0 for k in "abcde"}) == seeds.SCALE_LIMITS[1]


@pytest.mark.unit
def test_a_format_the_table_lacks_takes_the_median_over_its_formats() -> None:
    runs = matrix([case("001"), case("002")], ["qed"], ["file", "nbd"])
    family = {"qcow2": {"001": 2.0, "002": 1.0}, "raw": {"001": 4.0}, "bogus": "x"}
    s = seeds.seed(runs, {}, {}, family)
    assert s.durations == {"qed-file/001": 3.0, "qed-nbd/001": 3.0, "qed-file/002": 1.0, "qed-nbd/002": 1.0}
    assert s.counts(runs) == {seeds.TABLE_SOURCE: 4}


@pytest.mark.unit
def test_nothing_known_leaves_the_planners_default() -> None:
    runs = matrix([case("001")], ["qcow2"], ["file"])
    s = seeds.seed(runs, {}, {}, {})
    assert s.durations == {} and s.line(runs) == "durations: 1 estimated"
    assert costs(runs, s.durations) == {runs[0]: 1.0}


@pytest.mark.unit
def test_check_cache_in_checks_own_shape(tmp_path: Path) -> None:
    write_cache(tmp_path, json.dumps({f"{IOTESTS}/040": {"file": {"qcow2": 12.5, "raw": 3}, "nbd": {"raw": 4.0}},
                                      f"{IOTESTS}/tests/mirror-sparse": {"file": {"qcow2": 0.4}},
                                      "040": {"file": {"qed": 1.0}}}))
    durations, warning = seeds.check_cache(tmp_path)
    assert warning is None
    assert durations == {"qcow2-file/040": 12.5, "raw-file/040": 3.0, "raw-nbd/040": 4.0,
                         "qcow2-file/tests/mirror-sparse": 0.4, "qed-file/040": 1.0}


@pytest.mark.unit
@pytest.mark.parametrize("content,needle", [
    ("[1, 2]", "not a JSON object"),
    ('{"040": {"file": {"qcow2": NaN}}}', "not JSON"),
    ('{"040": {"file": {"qcow2": -1}}}', "is not a number from 0 to 86400"),
    ('{"040": {"file": {"qcow2": 1e999}}}', "is not a number"),
    ('{"040": {"file": {"qcow2": true}}}', "is not a number"),
    ('{"040": {"file": {"qcow2": "12"}}}', "is not a number"),
    ('{"040": {"file": 3}}', "not a JSON object"),
    ('{"040": 3}', "not a JSON object"),
    ("[" * 100000, "not JSON"),
    (b"\xff\xfe{}", "not JSON"),
    ("{\"040\": ", "not JSON"),
])
def test_a_hostile_check_cache_is_ignored_whole_with_a_warning(tmp_path: Path, content: str, needle: str) -> None:
    write_cache(tmp_path, content)
    durations, warning = seeds.check_cache(tmp_path)
    assert durations == {}
    assert warning is not None and needle in warning and "\n" not in warning


@pytest.mark.unit
def test_a_check_cache_that_is_not_a_small_regular_file_is_refused(tmp_path: Path) -> None:
    path = write_cache(tmp_path, "")
    path.unlink()
    os.mkfifo(path)  # would block a plain open()
    assert "not a regular file" in (seeds.check_cache(tmp_path)[1] or "")
    path.unlink()
    path.symlink_to("/dev/zero")
    assert "not a regular file" in (seeds.check_cache(tmp_path)[1] or "")
    path.unlink()
    path.symlink_to(tmp_path / "absent")
    assert "no such file" in (seeds.check_cache(tmp_path)[1] or "")
    path.unlink()
    with path.open("wb") as f:
        f.truncate(seeds.CHECK_CACHE_MAX_BYTES + 1)
    assert "larger than 16 MB" in (seeds.check_cache(tmp_path)[1] or "")
    path.unlink()
    assert seeds.check_cache(tmp_path) == ({}, None)  # absent: nothing to say


@pytest.mark.unit
def test_the_table_of_the_nearest_version_family() -> None:
    table: dict[str, Any] = {"versions": {"7.2": {"qcow2": {"001": 1.0}}, "10.0": {"qcow2": {"001": 2.0}}}}
    assert seeds.table_for("7.2.0", table)[0] == "7.2"
    assert seeds.table_for("10.0.13", table)[0] == "10.0"
    assert seeds.table_for("8.0.0", table)[0] == "7.2"
    assert seeds.table_for("9.1.50", table)[0] == "10.0"
    assert seeds.table_for("11.2.0", table)[0] == "10.0"
    assert seeds.table_for("not a version", table) == (None, {})
    assert seeds.table_for("7.2.0", {"versions": "x"}) == (None, {})


@pytest.mark.unit
def test_the_shipped_table_covers_both_reference_versions() -> None:
    table = seeds.shipped_table()
    assert "tools/durations-table" in table["generated_by"]
    for family in ("7.2", "10.0"):
        per_format = table["versions"][family]
        assert len(per_format["qcow2"]) > 50 and len(per_format["raw"]) > 50
        assert all(isinstance(v, float) and 0 < v < 600 for fmt in per_format.values() for v in fmt.values())


@pytest.mark.process
def test_a_cold_start_reads_checks_cache_and_says_where_durations_came_from(fake_tree: FakeTree,
                                                                            tmp_path: Path) -> None:
    for name in ("901", "902", "903", "904", "905"):
        fake_tree.add_test(name, f"echo {name} >> {tmp_path}/order\n", out="")
    write_cache(fake_tree.build, json.dumps({str(fake_tree.iotests / "903"): {"file": {"qcow2": 30.0}},
                                             str(fake_tree.iotests / "902"): {"file": {"qcow2": 20.0}},
                                             str(fake_tree.iotests / "904"): {"file": {"qcow2": 0.5}},
                                             "905": {"file": {"qcow2": 0.4}}}))  # as check -j1 905 names it
    proc = run_cli(["-f", "qcow2", "-j", "1", "--fixed-jobs", *fake_tree.args(tmp_path / "r"),
                    "--history", str(tmp_path / "h.json")])
    assert proc.returncode == 0, proc.stderr
    assert "durations: 4 check's .last-elapsed-cache, 1 estimated" in proc.stdout
    meta = json.loads((tmp_path / "r" / "results.json").read_text())
    assert meta["durations_from"] == {"check's .last-elapsed-cache": 4, "estimated": 1}
    # 901 is estimated at the 90th percentile of the others (27 s): it starts second
    assert (tmp_path / "order").read_text().split() == ["903", "901", "902", "904", "905"]
    # warm: the history now knows all three; a broken cache of check's is not even read
    write_cache(fake_tree.build, "{broken")
    proc = run_cli(["-f", "qcow2", *fake_tree.args(tmp_path / "r2"), "--history", str(tmp_path / "h.json")])
    assert proc.returncode == 0 and "durations: 5 history" in proc.stdout and "warning" not in proc.stderr


@pytest.mark.process
def test_a_broken_check_cache_is_one_warning_and_the_run_goes_on(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("901", "true\n", out="")
    write_cache(fake_tree.build, '{"901": {"file": {"qcow2": -5}}}')
    proc = run_cli(["-f", "qcow2", *fake_tree.args(tmp_path / "r"), "--history", str(tmp_path / "h.json")])
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "elapsed-time cache" in warnings[0] and "Traceback" not in proc.stderr
    assert "durations: 1 estimated" in proc.stdout


@pytest.mark.process
def test_a_shard_leaves_checks_cache_out_so_that_every_shard_computes_one_split(fake_tree: FakeTree,
                                                                              tmp_path: Path) -> None:
    for name in ("901", "902", "903", "904"):
        fake_tree.add_test(name, "true\n", out="")
    notes = []
    for cache in (None, json.dumps({str(fake_tree.iotests / "904"): {"file": {"qcow2": 30.0}}})):
        if cache is not None:
            write_cache(fake_tree.build, cache)
        proc = run_cli(["--list", "--shard", "1/2", "-f", "qcow2", *fake_tree.args(tmp_path / "r"),
                        "--history", str(tmp_path / "h.json")])
        assert proc.returncode == 0, proc.stderr
        notes.append([line for line in proc.stderr.splitlines() if "shard 1/2" in line])
        assert proc.stdout.count("\trun") == 2
    assert notes[0] == notes[1] and len(notes[0]) == 1 and "30.0" not in notes[0][0]
