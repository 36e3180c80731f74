"""`iotests-run merge` given hostile or broken shards: one line and exit 2, or a merge that stays inside its inputs.

A shard is a results folder from a CI job: its results.json and runs/ artifacts are input like any file
from a user. Each test crafts shard folders in tmp_path and runs the real command.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.report import html
from iotests_run.results import merge
from support import Completed, run_cli
from test_cli_errors import expect_usage_error

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


# H4, M8: numbers and types of a shard's results.json ---------------------------------------------------

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


# H6: results.json must be a regular file ---------------------------------------------------------------

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


# H5, M9: links in a shard's runs/ ----------------------------------------------------------------------

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


# M10: only regular files, each and all of them capped ---------------------------------------------------

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


# H4, L9: the page is bounded whatever it is given ------------------------------------------------------

def _result(i: int, outcome: Outcome = Outcome.PASS, started: float | None = 0.0, duration: float = 1.0,
            combo: tuple[str, str] = ("qcow2", "file")) -> Result:
    key = f"{i:06d}"
    return Result(Run(TestCase(key, Path(key), frozenset()), *combo), outcome, duration_s=duration,
                  started_s=started)


@pytest.mark.unit
@pytest.mark.parametrize("value", [1e300, float("inf"), float("nan"), -5.0])
def test_the_timeline_is_bounded_whatever_the_numbers(value: float) -> None:
    runs = [_result(1, started=value, duration=value), _result(2, started=0.0, duration=value)]
    samples: list[Any] = [[value, value, value], ["x", None, 1], [1], None, [0, 1, None]]
    chart = html.timeline(runs, samples)
    assert chart.startswith('<svg class="timeline"') and len(chart) < 20_000


@pytest.mark.unit
def test_the_timeline_draws_a_bounded_number_of_bars_and_points() -> None:
    runs = [_result(i, started=float(i % 1000), duration=1000.0) for i in range(20_000)]
    samples = [[float(t), 1000, 3.0] for t in range(200_000)]
    chart = html.timeline(runs, samples)
    assert chart.count("<rect") <= html.TIMELINE_BARS and len(chart) < 3_000_000
    assert "not drawn" in chart


@pytest.mark.unit
def test_the_page_is_bounded_however_many_runs_and_says_what_it_left_out() -> None:
    combos = [("qcow2", "file"), ("raw", "file"), ("qed", "nbd")]
    results = [_result(i, Outcome.FAIL if i % 97 == 0 else Outcome.PASS, combo=combo, started=None)
               for i in range(20_000) for combo in combos]
    results += [_result(1, combo=(f"f{i}", "file")) for i in range(html.MATRIX_COLUMNS - len(combos) + 5)]
    page = html.html_report(results, {"qemu": "x", "command": [1, None], "wall_s": "long"}, "merged")
    assert len(page) < 10_000_000
    assert page.count("<tr") <= html.MATRIX_ROWS + 1 and page.count('class="run"') == html.DETAILS
    failing = {f"{i:06d}" for i in range(0, 20_000, 97)}
    assert all(f'title="{key}"' in page for key in failing)  # every test with a problem keeps its row
    assert f"{20_000 - html.MATRIX_ROWS} more tests and 5 more format-protocol columns" in page
    assert all(f"<th>{f}-{p}</th>" in page for f, p in combos)  # the columns with the most runs are kept
    assert f"{len(failing) * 3 - html.DETAILS} more runs that did not pass cleanly" in page


@pytest.mark.process
def test_a_hundred_thousand_run_merge_stays_small_and_quick(tmp_path: Path) -> None:
    """L9: memory grows with the runs, not faster, and report.html stays a page (a 1e6-run merge took 3.7 GB and
    wrote 335 MB of it)."""
    import resource
    import time

    combos = [(f, p) for f in ("qcow2", "raw", "qed", "vmdk", "vpc") for p in ("file", "nbd")]
    runs = [{"test": f"{t:06d}", "format": f, "protocol": p, "outcome": "fail" if t % 500 == 0 else "pass",
             "duration_s": 1.5, "cpu_s": 0.7, "started_s": t * 0.02} for t in range(10_000) for f, p in combos]
    shards = [make_shard(tmp_path, f"s{i}", runs=runs[i::4], timeline=[[t, 8, 2.0] for t in range(5000)])
              for i in range(4)]
    for shard in shards:
        for child in sorted((shard / "runs").rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
    started = time.monotonic()
    proc = run_merge(tmp_path, *shards)
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >> 10
    report = (tmp_path / "out" / "report.html").stat().st_size
    print(f"1e5-run merge: {took:.1f} s, peak {peak_mb} MB, report.html {report >> 10} KB")
    assert report < 8 << 20 and peak_mb < 1024 and took < 120
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())["runs"]) == 100_000
