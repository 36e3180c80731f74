"""results/folder.py: a results folder claimed, marked and locked; records read back as untrusted input."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from support import FakeTree, expect_usage_error, run_cli, snapshot, tree_args

pytestmark = pytest.mark.process


def test_a_folder_that_is_not_ours_is_refused_untouched(pass_fail_tree: FakeTree, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "runs" / "thesis").mkdir(parents=True)
    (home / "runs" / "thesis" / "chapter1.tex").write_text("years of work")
    (home / "summary.txt").write_text("my summary")
    before = snapshot(home)
    expect_usage_error(tmp_path, tree_args(pass_fail_tree, home), str(home), "not an iotests-run results folder")
    assert snapshot(home) == before


def test_our_folder_is_marked_reused_and_a_pre_marker_one_taken_over(pass_fail_tree: FakeTree, tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert run_cli(tree_args(pass_fail_tree, results)).returncode == 1
    assert (results / ".iotests-run").is_file() and (results / "runs" / "qcow2-file" / "002").is_dir()
    (results / "runs" / "qcow2-file" / "stale").mkdir()
    assert run_cli(tree_args(pass_fail_tree, results, "001")).returncode == 0
    assert not (results / "runs" / "qcow2-file" / "stale").exists()  # ours: the previous run's files replaced
    (results / ".iotests-run").unlink()  # as written by a version before the marker
    assert run_cli(tree_args(pass_fail_tree, results, "001")).returncode == 0
    assert (results / ".iotests-run").is_file()


def test_a_second_invocation_on_a_held_folder_stops_at_once(pass_fail_tree: FakeTree, tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert run_cli(tree_args(pass_fail_tree, results, "001")).returncode == 0
    (tmp_path / "started").unlink()
    before = snapshot(results)
    fd = os.open(results / ".iotests-run", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        expect_usage_error(tmp_path, tree_args(pass_fail_tree, results, "001"), "in use by another iotests-run",
                           str(results))
    finally:
        os.close(fd)
    assert snapshot(results) == before


def test_output_paths_are_checked_before_anything_is_touched(pass_fail_tree: FakeTree, tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert run_cli(tree_args(pass_fail_tree, results)).returncode == 1
    (tmp_path / "started").unlink()
    before = snapshot(results)
    expect_usage_error(tmp_path, [*tree_args(pass_fail_tree, results), "--junit", str(tmp_path)], "--junit",
                       "is a folder")
    notes = tmp_path / "notes.txt"
    notes.write_text("not xml at all")
    expect_usage_error(tmp_path, [*tree_args(pass_fail_tree, results), "--junit", str(notes)], "not a JUnit XML file")
    expect_usage_error(tmp_path, [*pass_fail_tree.args(results), "--history", str(notes)], "--history", str(notes))
    assert notes.read_text() == "not xml at all"
    expect_usage_error(tmp_path, [*tree_args(pass_fail_tree, results), "--scratch", str(results / "runs")],
                       "--scratch", "inside the results folder")
    assert snapshot(results) == before


def test_hostile_results_json_is_one_line_not_a_traceback(pass_fail_tree: FakeTree, tmp_path: Path) -> None:
    base = {"test": "002", "format": "qcow2", "protocol": "file", "outcome": "fail", "duration_s": 1.0}
    bad_runs: dict[str, object] = {
        "missing field": [{k: v for k, v in base.items() if k != "format"}],
        "unknown outcome": [{**base, "outcome": "exploded"}],
        "duration text": [{**base, "duration_s": "slow"}],
        "duration nan": json.dumps([base]).replace("1.0", "NaN"),
        "not records": [1],
        "mixed types": [{**base, "test": ["002"]}],
        "artifacts escape": [{**base, "artifacts": "runs/../../../etc"}],
        "attachment outside": [{**base, "attachments": ["/etc/shadow"]}],
        "markup name": [{**base, "test": 'x"><img src=x onerror=alert(1)>'}],
        "deep nesting": "[" * 100_000 + "]" * 100_000,
    }
    for name, runs in bad_runs.items():
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        text = runs if isinstance(runs, str) else json.dumps(runs)
        (folder / "results.json").write_text('{"complete": true, "runs": ' + text + "}")
        expect_usage_error(tmp_path, ["merge", str(tmp_path / "out"), str(folder)], "results.json")
        assert not (tmp_path / "out").exists(), name
        expect_usage_error(tmp_path, [*tree_args(pass_fail_tree, folder), "--last-failed"], "--last-failed")
