"""`iotests-run merge` (results/merge.py): shards joined; hostile or broken shards refused in one line, or merged
without reaching outside their inputs."""

from __future__ import annotations

import html
import json
import os
import stat
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from iotests_run.results import merge
from support import (
    Completed,
    FakeTree,
    expect_usage_error,
    run_cli,
    run_cli_measured,
    runs_by_test,
    snapshot,
    tree_args,
)


@pytest.mark.process
def test_merge_checks_everything_before_it_writes(pass_fail_tree: FakeTree, tmp_path: Path) -> None:
    shard = tmp_path / "shard"
    assert run_cli(tree_args(pass_fail_tree, shard)).returncode == 1
    (tmp_path / "started").unlink()
    before = snapshot(shard)
    cases = [
        (["merge", str(shard / "runs" / "x"), str(shard)], "overlaps"),
        (["merge", str(shard), str(shard)], "overlaps"),
        (["merge", str(tmp_path / "out"), str(shard), str(shard)], "named twice"),
        (["merge", str(tmp_path / "out"), str(shard), str(tmp_path / "nothing")], "no results.json"),
    ]
    for args, needle in cases:
        expect_usage_error(tmp_path, args, needle)
        assert snapshot(shard) == before
        assert not (tmp_path / "out").exists() and not (shard / "runs" / "x").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "paper.txt").write_text("mine")
    expect_usage_error(tmp_path, ["merge", str(mine), str(shard)], "not an iotests-run results folder")
    assert snapshot(mine) == {"paper.txt": "mine"}


@pytest.mark.process
def test_merge_exits_as_the_shards_did_when_their_failures_were_quarantined(pass_fail_tree: FakeTree,
                                                                            tmp_path: Path) -> None:
    quarantine = tmp_path / "known-flaky.txt"
    quarantine.write_text("002\n")
    shards = []
    for i in (1, 2):
        shards.append(tmp_path / f"shard{i}")
        # the shards of a pipeline start from one history (each job restores the same cache); run one after the
        # other on one file, the first's durations would change the second's split (001 and 002 are in the shipped
        # table, which the first's fake durations then override)
        proc = run_cli(tree_args(pass_fail_tree, shards[-1], "--shard", f"{i}/2", "--quarantine", str(quarantine),
                                 "--history", str(tmp_path / f"history{i}.json")))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_cli(["merge", str(tmp_path / "merged"), *map(str, shards)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Quarantined (reported, not failing the job): qcow2-file 002" in proc.stdout
    proc = run_cli(tree_args(pass_fail_tree, tmp_path / "plain"))
    assert proc.returncode == 1
    assert run_cli(["merge", str(tmp_path / "merged2"), str(tmp_path / "plain")]).returncode == 1


RUN = {"test": "001", "format": "qcow2", "protocol": "file", "outcome": "fail", "duration_s": 1.0,
       "started_s": 0.5, "artifacts": "runs/qcow2-file/001"}


SECRET = "SECRET-OUTSIDE-THE-SHARD"


def make_shard(tmp_path: Path, name: str = "shard", runs: list[Any] | None = None, **meta: Any) -> Path:
    """A shard as a CI job leaves it: one failed run, its diff.txt in runs/, a timeline."""
    folder = tmp_path / name
    (folder / "runs" / "qcow2-file" / "001").mkdir(parents=True)
    (folder / "runs" / "qcow2-file" / "001" / "diff.txt").write_text("-good\n+bad\n")
    data = {"tool": "iotests-run test", "complete": True, "qemu": {"version": "7.2", "source": "/q", "build": "/b"},
            "command": ["iotests-run", "-g", "quick"], "wall_s": 2.0, "timeline": [[0, 1, 0.5], [1, 1, None]],
            **meta, "runs": [RUN] if runs is None else runs}
    (folder / "results.json").write_text(json.dumps(data))
    return folder


def outside(tmp_path: Path) -> Path:
    """A folder no shard holds, with a file the merge must never copy or show."""
    folder = tmp_path / "outside"
    folder.mkdir(exist_ok=True)
    (folder / "diff.txt").write_text(SECRET + "\n")
    (folder / "qcow2-file" / "001").mkdir(parents=True, exist_ok=True)
    (folder / "qcow2-file" / "001" / "diff.txt").write_text(SECRET + "\n")
    return folder


def run_merge(tmp_path: Path, *folders: Path) -> Completed:
    proc = run_cli(["merge", str(tmp_path / "out"), *map(str, folders)], timeout=120)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def everything_in(folder: Path) -> str:
    """Every file's text under folder, no link followed (none should be there)."""
    texts = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            assert not path.is_symlink(), path
            if path.is_file():
                texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


@pytest.mark.process
@pytest.mark.parametrize(("runs", "meta", "field"), [
    ([{**RUN, "duration_s": 1e300}], {}, "duration_s"),
    ([{**RUN, "started_s": 1e300}], {}, "started_s"),
    ([{**RUN, "cpu_s": 1e300}], {}, "cpu_s"),
    ([{**RUN, "copy": 10 ** 30}], {}, "copy"),
    (None, {"timeline": [[1e300, 1, None]]}, "timeline[0][0]"),
    (None, {"timeline": [[float("inf"), 1, None]]}, "timeline[0][0]"),  # written as 1e999: JSON reads inf
    (None, {"timeline": [["1", 1, None]]}, "timeline[0][0]"),
    (None, {"timeline": [[1, 1, "x"]]}, "timeline[0][2]"),
    (None, {"timeline": [[1, 1]]}, "timeline[0]"),
    (None, {"timeline": "every second"}, "timeline"),
    (None, {"qemu": "x"}, "qemu"),
    (None, {"qemu": {"source": ["/q"]}}, "qemu.source"),
    (None, {"shard": {"index": 1, "total": 10 ** 9, "split": "abc"}}, "shard.total"),
    (None, {"shard": {"index": 3, "total": 2, "split": "abc"}}, "shard.index"),
    (None, {"shard": "1/2"}, "shard"),
    (None, {"wall_s": 1e300}, "wall_s"),
    (None, {"wall_s": "long"}, "wall_s"),
    (None, {"planned": 10 ** 30}, "planned"),
    (None, {"planned": 1.5}, "planned"),
    (None, {"complete": "yes"}, "complete"),
    (None, {"strict_flaky": 1}, "strict_flaky"),
    (None, {"command": "iotests-run -g quick"}, "command"),
    (None, {"command": ["iotests-run", 7]}, "command[1]"),
    (None, {"started": {"at": 1}}, "started"),
    (None, {"affected": "line\x1b[2Jbreak"}, "affected"),
    (None, {"history_tree": "x" * 100_000}, "history_tree"),
])
def test_a_bad_number_or_type_in_a_shard_is_one_line_naming_the_file_and_field(
        tmp_path: Path, runs: list[Any] | None, meta: dict[str, Any], field: str) -> None:
    shard = make_shard(tmp_path, runs=runs, **meta)
    text = (shard / "results.json").read_text().replace("Infinity", "1e999")
    (shard / "results.json").write_text(text)
    expect_usage_error(tmp_path, ["merge", str(tmp_path / "out"), str(shard)], str(shard / "results.json"), field)
    assert not (tmp_path / "out").exists()


@pytest.mark.process
def test_a_shard_within_the_bounds_still_merges(tmp_path: Path) -> None:
    """The checks refuse nothing a real shard holds: null busy cores, a shard part, a copy number."""
    part = {"index": 1, "total": 1, "split": "0123abcd", "runs": 2, "of_runs": 2, "predicted_s": [2.0]}
    shard = make_shard(tmp_path, runs=[RUN, {**RUN, "test": "002", "outcome": "pass", "artifacts": None,
                                             "copy": 0, "cpu_s": None, "started_s": None}],
                       shard=part, planned=2, strict_flaky=False, history_tree="abc")
    proc = run_merge(tmp_path, shard)
    assert proc.returncode == 1, proc.stderr  # the failed run fails the merge, as it failed its shard
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["planned"] == 2 and data["complete"] is True and len(data["runs"]) == 2
    assert "+bad" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.process
def test_a_fifo_as_results_json_is_refused_at_once(tmp_path: Path) -> None:
    shard = make_shard(tmp_path)
    (shard / "results.json").unlink()
    os.mkfifo(shard / "results.json")
    expect_usage_error(tmp_path, ["merge", str(tmp_path / "out"), str(shard)], "not a regular file",
                       str(shard / "results.json"))


@pytest.mark.process
def test_a_link_as_results_json_is_not_followed(tmp_path: Path) -> None:
    shard = make_shard(tmp_path)
    real = make_shard(tmp_path, "elsewhere")
    (shard / "results.json").unlink()
    (shard / "results.json").symlink_to(real / "results.json")
    expect_usage_error(tmp_path, ["merge", str(tmp_path / "out"), str(shard)], "symbolic link",
                       str(shard / "results.json"))


@pytest.mark.process
def test_runs_as_a_link_to_an_outside_folder_is_not_copied(tmp_path: Path) -> None:
    shard = make_shard(tmp_path)
    for child in sorted((shard / "runs").rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    (shard / "runs").rmdir()
    (shard / "runs").symlink_to(outside(tmp_path))
    proc = run_merge(tmp_path, shard)
    assert proc.returncode == 1, proc.stderr
    assert f"{shard / 'runs'}: a symbolic link, not followed" in proc.stderr
    assert SECRET not in everything_in(tmp_path / "out")


@pytest.mark.process
def test_an_outside_diff_never_reaches_the_report_or_junit(tmp_path: Path) -> None:
    shard = make_shard(tmp_path)
    diff = shard / "runs" / "qcow2-file" / "001" / "diff.txt"
    diff.unlink()
    diff.symlink_to(outside(tmp_path) / "diff.txt")
    proc = run_merge(tmp_path, shard)
    assert proc.returncode == 1, proc.stderr
    assert f"{diff}: a symbolic link, not followed" in proc.stderr
    merged = everything_in(tmp_path / "out")
    assert SECRET not in merged and "qcow2-file 001" in (tmp_path / "out" / "report.html").read_text()
    assert SECRET not in (tmp_path / "out" / "junit.xml").read_text()


@pytest.mark.process
def test_a_folder_link_inside_runs_is_not_followed_at_any_level(tmp_path: Path) -> None:
    """M9: O_NOFOLLOW on the last component alone would follow runs/LINK/001/diff.txt's LINK."""
    shard = make_shard(tmp_path)
    out_side = outside(tmp_path)
    (shard / "runs" / "qcow2-file" / "001" / "scratch").symlink_to(out_side)
    (shard / "runs" / "raw-file").symlink_to(out_side / "qcow2-file")
    proc = run_merge(tmp_path, shard)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("a symbolic link, not followed") == 2, proc.stderr
    assert SECRET not in everything_in(tmp_path / "out")
    assert (tmp_path / "out" / "runs" / "qcow2-file" / "001" / "diff.txt").read_text() == "-good\n+bad\n"


@pytest.mark.process
def test_fifos_devices_and_huge_files_in_runs_are_left_out(tmp_path: Path) -> None:
    shard = make_shard(tmp_path)
    run = shard / "runs" / "qcow2-file" / "001"
    os.mkfifo(run / "pipe")
    if os.geteuid() == 0:
        os.mknod(run / "zero", stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero: copied, it never ends
    with open(run / "core", "wb") as sparse:  # bigger than a file may be, and costs no disk
        sparse.truncate(merge.FILE_BYTES + 1)
    (run / "reproduce.sh").write_text("#!/bin/sh\n")
    (run / "reproduce.sh").chmod(0o755)
    proc = run_merge(tmp_path, shard)
    assert proc.returncode == 1, proc.stderr
    copied = tmp_path / "out" / "runs" / "qcow2-file" / "001"
    assert sorted(p.name for p in copied.iterdir()) == ["diff.txt", "reproduce.sh"]
    assert os.access(copied / "reproduce.sh", os.X_OK)
    assert f"{run / 'pipe'}: a FIFO, not read" in proc.stderr
    assert f"{run / 'core'}: larger than {merge.FILE_BYTES >> 20} MB" in proc.stderr
    if os.geteuid() == 0:
        assert f"{run / 'zero'}: a device, not read" in proc.stderr


@pytest.mark.unit
def test_the_artifacts_of_all_shards_share_one_total_cap(tmp_path: Path) -> None:
    first, second = make_shard(tmp_path, "a"), make_shard(tmp_path, "b")
    (first / "runs" / "qcow2-file" / "001" / "output").write_bytes(b"x" * 100)
    (second / "runs" / "raw-file" / "002").mkdir(parents=True)
    (second / "runs" / "raw-file" / "002" / "output").write_bytes(b"y" * 100)
    out = tmp_path / "out"
    copied = merge.copy_artifacts(out, [first, second], total=150)
    assert (out / "runs" / "qcow2-file" / "001" / "output").read_bytes() == b"x" * 100
    assert not (out / "runs" / "raw-file" / "002" / "output").exists()
    assert any("beyond the merge's" in w for w in copied.warnings) and copied.left_out >= 1


@pytest.mark.unit
def test_warnings_are_bounded_however_many_files_are_left_out(tmp_path: Path) -> None:
    shard = make_shard(tmp_path)
    for i in range(merge.SHOWN_WARNINGS * 3):
        os.mkfifo(shard / "runs" / f"pipe{i}")
    copied = merge.copy_artifacts(tmp_path / "out", [shard])
    assert len(copied.warnings) == merge.SHOWN_WARNINGS and copied.left_out == merge.SHOWN_WARNINGS * 3


@pytest.mark.process
def test_a_hundred_thousand_run_merge_stays_small_and_quick(tmp_path: Path) -> None:
    """L9: memory grows with the runs, not faster, and report.html stays a page (a 1e6-run merge took 3.7 GB and
    wrote 335 MB of it)."""
    combos = [(f, p) for f in ("qcow2", "raw", "qed", "vmdk", "vpc") for p in ("file", "nbd")]
    runs = [{"test": f"{t:06d}", "format": f, "protocol": p, "outcome": "fail" if t % 500 == 0 else "pass",
             "duration_s": 1.5, "cpu_s": 0.7, "started_s": t * 0.02} for t in range(10_000) for f, p in combos]
    shards = [make_shard(tmp_path, f"s{i}", runs=runs[i::4], timeline=[[t, 8, 2.0] for t in range(5000)])
              for i in range(4)]
    for shard in shards:
        for child in sorted((shard / "runs").rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
    started = time.monotonic()
    proc, peak_mb = run_cli_measured(["merge", str(tmp_path / "out"), *map(str, shards)], timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    report = (tmp_path / "out" / "report.html").stat().st_size
    print(f"1e5-run merge: {took:.1f} s, peak {peak_mb} MB, report.html {report >> 10} KB")
    assert report < 8 << 20 and peak_mb < 1024 and took < 120
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())["runs"]) == 100_000


@pytest.mark.process
def test_shards_cover_the_plan_once_and_merge_joins_them(fake_tree: FakeTree, tmp_path: Path) -> None:
    for i in range(1, 8):
        fake_tree.add_test(f"{i:03}", "echo ok\n" if i != 3 else "echo bad\n", out="ok\n")
    history = tmp_path / "durations.json"
    lists = [run_cli(["--list", "--shard", f"{i}/3", "--history", str(history), *fake_tree.args(tmp_path / "r")])
             .stdout.splitlines() for i in (1, 2, 3)]
    flat = [line for lines in lists for line in lines]
    assert sorted(flat) == sorted(set(flat)) and len(flat) == 7
    env = dict(os.environ, CI_NODE_TOTAL="3")
    for i in (1, 2, 3):
        env["CI_NODE_INDEX"] = str(i)
        # each CI machine starts from the same history (the pipeline cache) and updates its own copy
        mine = tmp_path / f"durations-{i}.json"
        proc = run_cli(["--history", str(mine), *fake_tree.args(tmp_path / f"shard{i}")], env=env)
        assert f"shard {i}/3" in proc.stdout
        expected = sorted(("qcow2", line.split()[0]) for line in lists[i - 1])
        assert sorted(runs_by_test(tmp_path / f"shard{i}")) == expected
    merged = tmp_path / "merged"
    proc = run_cli(["merge", str(merged), *(str(tmp_path / f"shard{i}") for i in (1, 2, 3))])
    assert proc.returncode == 1
    runs = runs_by_test(merged)
    assert len(runs) == 7 and runs[("qcow2", "003")]["outcome"] == "fail"
    assert (merged / str(runs[("qcow2", "003")]["artifacts"]) / "diff.txt").is_file()
    root = ET.parse(merged / "junit.xml").getroot()
    failure = next(c for c in root.iter("testcase") if c.get("name") == "003").find("failure")
    assert failure is not None and "+bad" in (failure.text or "")
    assert proc.stdout.rstrip().endswith("6 passed, 1 failed, 0 skipped")
    page = (merged / "report.html").read_text()
    assert page.count('class="cell o-pass"') == 6 and 'href="runs/qcow2-file/003/diff.txt"' in page
    bad = run_cli(["merge", str(tmp_path / "m2"), str(tmp_path / "nowhere")])
    assert bad.returncode == 2 and "merge: no results.json in" in bad.stderr


@pytest.mark.process
def test_merge_refuses_shards_that_split_differently_and_its_history_balances_the_next_split(
        fake_tree: FakeTree, tmp_path: Path) -> None:
    for i in range(1, 7):
        fake_tree.add_test(f"{i:03}", f"sleep {1.5 if i == 6 else 0.05}; echo ok\n", out="ok\n")
    env = dict(os.environ, CI_NODE_TOTAL="2")

    def shard(index: int, history: Path, name: str) -> Path:
        env["CI_NODE_INDEX"] = str(index)
        proc = run_cli(["--history", str(history), *fake_tree.args(tmp_path / name)], env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return tmp_path / name

    # a history that knows 006 is long splits differently from an empty one (a cache one shard missed)
    known = tmp_path / "known.json"
    assert run_cli(["--history", str(known), *fake_tree.args(tmp_path / "whole")]).returncode == 0
    cold = [shard(1, tmp_path / "cold-1.json", "cold1"), shard(2, tmp_path / "cold-2.json", "cold2")]
    warm2 = shard(2, known, "warm2")
    proc = run_cli(["merge", str(tmp_path / "bad"), str(cold[0]), str(warm2)])
    assert proc.returncode == 2 and "computed different splits" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    proc = run_cli(["merge", str(tmp_path / "half"), str(cold[0])])
    assert proc.returncode == 130 and "not among the inputs: shard 2/2" in proc.stderr
    assert "INCOMPLETE (shard 2/2 not merged)" in (tmp_path / "half" / "report.html").read_text()

    # merge is the history's one writer: the next pipeline's shards are split by the runs' durations
    merged_history = tmp_path / "merged.json"
    proc = run_cli(["merge", str(tmp_path / "merged"), *map(str, cold), "--history", str(merged_history)])
    assert proc.returncode == 0, proc.stderr
    listed = run_cli(["--list", "--shard", "1/2", "--history", str(merged_history),
                      *fake_tree.args(tmp_path / "r")]).stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["006"]  # the long run alone, the five short ones on shard 2
    page = (tmp_path / "merged" / "report.html").read_text()
    assert page.count('<svg class="timeline"') == 2 and "shard 1/2 (" in page and "shard 2/2 (" in page
    data = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert sorted(r["shard"] for r in data["runs"]) == [1, 1, 1, 2, 2, 2]
    assert [s["shard"]["index"] for s in data["shards"]] == [1, 2]
    timelines = [json.loads((c / "results.json").read_text()).get("timeline", []) for c in cold]
    assert [s["timeline"] for s in data["shards"]] == timelines and any(timelines)
    # the page names the merge's command line, and each shard's under its timeline (not shard 1's as the merge's)
    assert data["command"][:2] == ["iotests-run", "merge"] and "--history" in data["command"]
    for folder, entry in zip(cold, data["shards"], strict=True):
        assert entry["command"] == json.loads((folder / "results.json").read_text())["command"]
        assert f"--results {folder}" in " ".join(entry["command"])
        assert html.escape(" ".join(entry["command"])) in page
    assert page.index("iotests-run merge ") < page.index('<svg class="timeline"')
