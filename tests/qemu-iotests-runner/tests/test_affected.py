"""Coverage map and --affected-by: gcc's files read (a real gcc --coverage build), diffs mapped onto
functions, the conservative rules, and the whole flow on a fake tree whose qemu-img is a gcov build."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iotests_run.affected import gcov
from iotests_run.affected.coverage_map import load
from iotests_run.affected.gcov import GcovError
from iotests_run.affected.selection import read_diff
from iotests_run.errors import UsageError
from support import FAKE_C, Completed, FakeTree, ReferenceTree, gcov_binary, map_json, needs_gcc, run_cli, write_map

REPO = Path(__file__).resolve().parents[3]


def _gcov_tree(fake_tree: FakeTree) -> Path:
    """The fake tree's qemu-img is a gcov build of src/block/fake.c; tests 001 and 002 run it."""
    source = fake_tree.source / "block" / "fake.c"
    source.parent.mkdir(parents=True)
    source.write_text(FAKE_C)
    gcov_binary(source, fake_tree.build)
    fake_tree.add_test("001", '"$QEMU_IMG_PROG" grow >/dev/null; echo ok\n', out="ok\n")
    fake_tree.add_test("002", '"$QEMU_IMG_PROG" shrink >/dev/null; echo ok\n', out="ok\n")
    # 003's qemu-img is killed with SIGKILL (as common.qemu kills QEMU): its counters must be written all the same
    fake_tree.add_test("003", '"$QEMU_IMG_PROG" wait >"$TEST_DIR/out" & pid=$!\n'
                              'until [ -s "$TEST_DIR/out" ]; do sleep 0.05; done\n'
                              'kill -KILL $pid; wait $pid 2>/dev/null; echo ok\n', out="ok\n")
    return source


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@invalid", *args], cwd=cwd, check=True,
                   capture_output=True)


def _listing(proc: Completed) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    return {line.split("\t")[0]: line.split("\t")[3] for line in proc.stdout.splitlines()}


@pytest.mark.process
@needs_gcc
def test_a_map_then_only_the_affected_runs(fake_tree: FakeTree, tmp_path: Path) -> None:
    source = _gcov_tree(fake_tree)
    cmap = tmp_path / "map.json.gz"
    proc = run_cli(["--coverage-map", str(cmap), *fake_tree.args(tmp_path / "r1")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"coverage map {cmap}: 3 runs" in proc.stdout
    data = json.loads(gzip.decompress(cmap.read_bytes()))
    table = [(p, s[0]) for p, spans in sorted(data["files"].items()) for s in spans]
    ran = {k: {table[i][1] for i in load(cmap).runs[k]} for k in data["runs"]}
    assert ran == {"qcow2-file/001": {"main", "nothing", "grow"}, "qcow2-file/002": {"main", "nothing", "shrink"},
                   "qcow2-file/003": {"main", "nothing", "grow"}}
    assert not list((tmp_path / "r1").rglob("*.gcda"))  # counters stay in the sandboxes, gone with them

    _git(fake_tree.source, "init", "-q")
    _git(fake_tree.source, "add", "-A")
    _git(fake_tree.source, "commit", "-qm", "base")
    source.write_text(FAKE_C.replace("return n / 2;", "return n / 3;"))  # inside shrink
    args = ["--list", "--coverage-map", str(cmap), *fake_tree.args(tmp_path / "r")]
    proc = run_cli(["--affected-by", "HEAD", *args])
    assert _listing(proc) == {
        "001": "skip: not affected by the change (coverage map of " + data["created"][:10] + ")",
        "002": "run: affected: executes shrink (block/fake.c)",
        "003": "skip: not affected by the change (coverage map of " + data["created"][:10] + ")"}
    assert "1 of 3 runs affected by git diff HEAD" in proc.stderr
    # the same change as a patch file (what Patchew has)
    patch = tmp_path / "series.patch"
    patch.write_text(subprocess.run(["git", "diff", "HEAD"], cwd=fake_tree.source, capture_output=True,
                                    text=True, check=True).stdout)
    assert _listing(run_cli(["--affected-by-diff", str(patch), *args]))["002"].startswith("run: affected")
    # Patchew's script, opted in: the series' runs only
    patchew = subprocess.run([str(REPO / "tools" / "patchew" / "run"), str(fake_tree.source), str(fake_tree.build),
                              "qcow2"], capture_output=True, text=True, cwd=tmp_path,
                             env=dict(os.environ, IOTESTS_RESULTS=str(tmp_path / "pw"), PYTHON=sys.executable,
                                      IOTESTS_COVERAGE_MAP=str(cmap), IOTESTS_AFFECTED_BY_DIFF=str(patch)))
    assert patchew.returncode == 0 and patchew.stdout.rstrip().endswith("1 passed, 0 failed, 2 skipped"), \
        patchew.stdout
    assert f"Selection: 1 of 3 runs affected by {patch}" in patchew.stdout.splitlines()[1]
    # the comment above shrink: outside every function, so everything runs
    source.write_text(FAKE_C.replace("only `qemu-img shrink` runs it", "only shrink runs it"))
    listed = _listing(run_cli(["--affected-by", "HEAD", *args]))
    assert all(v.startswith("run: affected: block/fake.c:9 changed outside any function") for v in listed.values())
    # a run and its summary: the unaffected runs are reported not run, with the reason, in JUnit too
    source.write_text(FAKE_C.replace("return n * 2;", "return n * 4;"))
    proc = run_cli(["--affected-by", "HEAD", "--coverage-map", str(cmap), *fake_tree.args(tmp_path / "r2")])
    assert proc.returncode == 0 and "2 of 3 runs affected by git diff HEAD" in proc.stdout
    runs = {r["test"]: r for r in json.loads((tmp_path / "r2" / "results.json").read_text())["runs"]}
    assert runs["001"]["outcome"] == runs["003"]["outcome"] == "pass" and runs["002"]["outcome"] == "not-run"
    assert runs["002"]["reason"].startswith("not affected by the change (coverage map of")
    assert "not affected by the change" in (tmp_path / "r2" / "junit.xml").read_text()

    # the map made from other sources than the tree's: refused, unless asked for
    _git(fake_tree.source, "commit", "-qam", "grow by 4")
    (fake_tree.source / "block" / "fake.c").write_text(FAKE_C.replace("return n / 2;", "return n / 5;"))
    _git(fake_tree.source, "commit", "-qam", "shrink by 5")
    proc = run_cli(["--affected-by", "HEAD", *args])
    assert proc.returncode == 2 and "is older than the tree's sources: block/fake.c" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli(["--affected-by", "HEAD", "--affected-by-stale-map", *args])
    assert proc.returncode == 0 and "used anyway (--affected-by-stale-map)" in proc.stderr
    # CI's choice: a stale map makes the full run, said in one line, never a failed job
    proc = run_cli(["--affected-by", "HEAD", "--affected-by-fallback", *args])
    assert proc.returncode == 0 and set(_listing(proc).values()) == {"run"}, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "--affected-by-fallback" in line]
    assert len(warned) == 1 and "every run" in warned[0] and "is older than the tree's sources" in warned[0]
    patchew = subprocess.run([str(REPO / "tools" / "patchew" / "run"), str(fake_tree.source), str(fake_tree.build),
                              "qcow2"], capture_output=True, text=True, cwd=tmp_path,
                             env=dict(os.environ, IOTESTS_RESULTS=str(tmp_path / "pw-stale"), PYTHON=sys.executable,
                                      IOTESTS_COVERAGE_MAP=str(cmap), IOTESTS_AFFECTED_BY="HEAD"))
    # its mail says the runs were all of them, and why
    assert patchew.stdout.splitlines()[1].startswith("Selection: 3 of 3 runs: every run, the change could not "
                                                     "select (coverage map"), patchew.stdout
    assert ", 0 skipped" in patchew.stdout.rstrip().splitlines()[-1], patchew.stdout
    # a diff against a REV whose text of the changed file is not the map's: refused as well
    proc = run_cli(["--affected-by", "HEAD~1", *args])
    assert proc.returncode == 2 and "is older than the tree's sources: block/fake.c" in proc.stderr
    _git(fake_tree.source, "checkout", "-q", "HEAD~2")  # the map's own sources: usable again
    assert run_cli(["--affected-by", "HEAD", *args]).returncode == 0


@pytest.mark.process
def test_bad_change_selections_are_one_line_and_exit_2(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    maps = {}
    for version in ("7.2.0", "9.9.9"):
        maps[version] = tmp_path / f"map-{version}.json.gz"
        maps[version].write_bytes(gzip.compress(json.dumps({
            "format": "iotests-run coverage map 1", "tree": f"QEMU {version} tests:x", "created": "2026-01-01",
            "files": {}, "digests": {}, "runs": {}}).encode()))
    cmap = maps["7.2.0"]
    args = fake_tree.args(tmp_path / "r")
    cases = [
        (["--affected-by", "HEAD", "--coverage-map", str(cmap)], "needs a git checkout"),
        (["--affected-by-diff", str(tmp_path / "none.patch"), "--coverage-map", str(cmap)], "no such file"),
        (["--affected-by-diff", str(notes), "--coverage-map", str(tmp_path / "nomap")], "no coverage map"),
        (["--affected-by-diff", str(notes), "--coverage-map", str(notes)], "is not a coverage map"),
        (["--affected-by-diff", str(notes), "--coverage-map", str(maps["9.9.9"])], "is of another tree (QEMU 9.9.9"),
        (["--affected-by-stale-map"], "--affected-by-stale-map needs"),
        (["--affected-by-fallback"], "--affected-by-fallback needs"),
        (["--affected-by", "HEAD", "--affected-by-diff", str(notes)], "not allowed with argument"),
        (["--coverage-map", str(notes)], "is not a coverage map"),
        (["--coverage-map", str(tmp_path / "m.gz")], "needs a gcov build"),
    ]
    for extra, words in cases:
        proc = run_cli([*extra, *args])
        assert proc.returncode == 2 and words in proc.stderr, (extra, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 or "usage:" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert notes.read_text() == "my notes\n" and not (tmp_path / "r").exists()
    _git(fake_tree.source, "init", "-q")
    _git(fake_tree.source, "add", "-A")
    _git(fake_tree.source, "commit", "-qm", "base")
    proc = run_cli(["--affected-by", "no-such-rev", "--coverage-map", str(cmap), *args])
    assert proc.returncode == 2 and "unknown revision: no-such-rev" in proc.stderr
    proc = run_cli(["--affected-by=--upload-pack=x", "--coverage-map", str(cmap), *args])
    assert proc.returncode == 2 and "unknown revision" in proc.stderr
    # with --affected-by-fallback, what cannot select runs is one warning line and the full run
    for extra, words in ((["--affected-by", "no-such-rev", "--coverage-map", str(cmap)], "unknown revision"),
                         (["--affected-by", "HEAD", "--coverage-map", str(tmp_path / "nomap")], "no coverage map"),
                         (["--affected-by", "HEAD", "--coverage-map", str(maps["9.9.9"])], "is of another tree")):
        proc = run_cli([*extra, "--affected-by-fallback", *args])
        assert proc.returncode == 0 and words in proc.stderr and "every run (--affected-by-fallback)" in proc.stderr
        runs = json.loads((tmp_path / "r" / "results.json").read_text())["runs"]
        assert [(r["test"], r["outcome"]) for r in runs] == [("001", "pass")]
        shutil.rmtree(tmp_path / "r")


SMALL = ["001", "002", "004", "005", "008"]  # quick tests that read and write images


@pytest.mark.e2e
def test_a_qcow2_patch_runs_the_qcow2_runs_only(coverage_tree: ReferenceTree, reference_tree: ReferenceTree,
                                                 tmp_path: Path) -> None:
    cmap_file = tmp_path / "map.json.gz"
    proc = run_cli(["-f", "qcow2,raw", *SMALL, "--coverage-map", str(cmap_file),
                    *coverage_tree.args(tmp_path / "r-map")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    cmap = load(cmap_file)
    table = cmap.table()
    assert sorted(cmap.runs) == sorted(f"{f}-file/{t}" for f in ("qcow2", "raw") for t in SMALL)
    ran = {key: {(table[i][0], table[i][1].name) for i in functions} for key, functions in cmap.runs.items()}
    write_path = ("block/qcow2.c", "qcow2_co_pwritev_part")
    assert all(write_path in ran[f"qcow2-file/{t}"] for t in ("001", "002")), "qcow2 runs write through qcow2"
    assert all(write_path not in ran[f"raw-file/{t}"] for t in SMALL), "raw runs never write through qcow2"
    assert all(("block/raw-format.c", "raw_co_pwritev") in ran[f"raw-file/{t}"] for t in ("001", "002"))

    # a patch inside qcow2_co_pwritev_part, as a mail would carry it (no git here: the tree is a tarball's)
    span = next(s for s in cmap.files["block/qcow2.c"] if s.name == "qcow2_co_pwritev_part")
    line = span.start + 4
    old = (reference_tree.source / "block" / "qcow2.c").read_text().splitlines()[line - 1]
    patch = tmp_path / "0001-qcow2-write.patch"
    patch.write_text(f"Subject: [PATCH] qcow2: a change in the write path\n\n---\n"
                     f"diff --git a/block/qcow2.c b/block/qcow2.c\n--- a/block/qcow2.c\n+++ b/block/qcow2.c\n"
                     f"@@ -{line} +{line} @@\n-{old}\n+{old} /* changed */\n-- \n2.39.5\n")
    args = ["-f", "qcow2,raw", *SMALL, "--affected-by-diff", str(patch), "--coverage-map", str(cmap_file)]
    listed = run_cli(["--list", *args, *reference_tree.args(tmp_path / "r")])
    assert listed.returncode == 0, listed.stderr
    rows = {(row.split("\t")[1], row.split("\t")[0]): row.split("\t")[3] for row in listed.stdout.splitlines()}
    writers = {t for t in SMALL if write_path in ran[f"qcow2-file/{t}"]}
    for (fmt, test), what in rows.items():
        if fmt == "qcow2" and test in writers:
            assert what.startswith("run: affected: executes qcow2_co_pwritev_part (block/qcow2.c)"), what
        else:
            assert what.startswith("skip: not affected by the change (coverage map of"), (fmt, test, what)
    assert f"{len(writers)} of {2 * len(SMALL)} runs affected by {patch}" in listed.stderr

    # and for real, on the plain build: the affected runs pass, the others are reported not run
    proc = run_cli([*args, *reference_tree.args(tmp_path / "r-affected")])
    assert proc.returncode == 0, proc.stdout[-3000:]
    runs = {(r["format"], r["test"]): r for r in
            json.loads((tmp_path / "r-affected" / "results.json").read_text())["runs"]}
    assert {k for k, r in runs.items() if r["outcome"] == "pass"} == {("qcow2", t) for t in writers}


@pytest.mark.e2e
def test_a_qemu_killed_while_it_quits_keeps_its_counters(coverage_tree: ReferenceTree, tmp_path: Path) -> None:
    # 312 sends `quit` and its clean-up SIGKILLs the QEMU while it still writes its counters at exit: the
    # helper once dumped beside gcov's exit dump there, which crashed QEMU and lost most of them
    cmap_file = tmp_path / "map.json.gz"
    proc = run_cli(["-f", "qcow2", "312", "--coverage-map", str(cmap_file), *coverage_tree.args(tmp_path / "r")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    cmap = load(cmap_file)
    table = cmap.table()
    ran = {(table[i][0], table[i][1].name) for i in cmap.runs["qcow2-file/312"]}
    assert ("block/mirror.c", "mirror_run") in ran  # what the test is about: its QEMU's mirror job
    assert ("softmmu/vl.c", "qemu_init") in ran  # and QEMU's start-up, written with the rest at its exit


@pytest.mark.unit
def test_fifos_and_devices_are_refused_unread(tmp_path: Path, no_hang: None) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(UsageError, match="--affected-by-diff: not a regular file"):
            read_diff(path)
        with pytest.raises(UsageError, match="coverage map: not a regular file"):
            load(path)
        with pytest.raises(GcovError, match="not a regular file"):
            gcov.read_counts(path)
        with pytest.raises(GcovError, match="not a regular file"):
            gcov.read_notes(path)
    # counters a test replaced by a link are not followed
    (tmp_path / "real.gcda").write_bytes(b"")
    (tmp_path / "link.gcda").symlink_to(tmp_path / "real.gcda")
    with pytest.raises(GcovError, match="a symbolic link"):
        gcov.read_counts(tmp_path / "link.gcda")


@pytest.mark.process
def test_a_fifo_as_diff_or_map_is_one_line_and_exit_2(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cmap = write_map(tmp_path / "map.json.gz", map_json())
    for extra in (["--affected-by-diff", str(fifo), "--coverage-map", str(cmap)],
                  ["--affected-by-diff", "/dev/zero", "--coverage-map", str(cmap)],
                  ["--affected-by-diff", str(cmap), "--coverage-map", str(fifo)],
                  ["--coverage-map", str(fifo)],
                  ["--coverage-map", "/dev/zero"]):
        proc = run_cli([*extra, *fake_tree.args(tmp_path / "r")], timeout=60)
        assert proc.returncode == 2 and "not a regular file" in proc.stderr, (extra, proc.stderr)
        assert proc.stderr.count("\n") == 1
