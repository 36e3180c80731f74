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

from iotests_run.affected.coverage_map import CoverageMap, Recorder, Span, gcov_environment, load
from iotests_run.affected.gcov import read_counts, read_notes
from iotests_run.affected.selection import Affected, FileChange, Hunk, affected, parse_diff
from iotests_run.model import Run
from iotests_run.tree.discovery import discover
from support import Completed, FakeTree, ReferenceTree, run_cli

REPO = Path(__file__).resolve().parents[3]
GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed")

FAKE_C = """\
#include <stdio.h>
#include <string.h>

static int grow(int n)
{
    return n * 2;
}

/* shrink: only `qemu-img shrink` runs it */
static int shrink(int n)
{
    if (n > 1) {
        return n / 2;
    }
    return n;
}

static void nothing(void) { }

int main(int argc, char **argv)
{
    nothing();
    if (argc > 1 && strcmp(argv[1], "grow") == 0) {
        printf("%d\\n", grow(argc));
    } else if (argc > 1 && strcmp(argv[1], "shrink") == 0) {
        printf("%d\\n", shrink(argc));
    } else if (argc > 1 && strcmp(argv[1], "wait") == 0) {
        extern int pause(void);
        printf("%d\\n", grow(argc));
        fflush(stdout);
        pause();
    }
    return 0;
}
"""


def _gcov_binary(source: Path, build: Path, name: str = "qemu-img") -> Path:
    """Compile source as QEMU's build does: from the build folder, with --coverage."""
    assert GCC is not None
    build.mkdir(parents=True, exist_ok=True)
    binary = build / name
    if binary.exists():
        binary.unlink()
    subprocess.run([GCC, "--coverage", "-O0", "-o", name, str(Path("..") / source.relative_to(build.parent))],
                   cwd=build, check=True)
    return binary


@pytest.mark.unit
@needs_gcc
def test_gcc_notes_and_counters_say_which_functions_ran(tmp_path: Path) -> None:
    src = tmp_path / "src" / "block" / "fake.c"
    src.parent.mkdir(parents=True)
    src.write_text(FAKE_C)
    binary = _gcov_binary(src, tmp_path / "build")
    notes = read_notes(next((tmp_path / "build").glob("*.gcno")))
    spans = {f.name: (f.start, f.end) for f in notes.functions}
    assert spans == {"grow": (4, 7), "shrink": (10, 16), "nothing": (18, 18), "main": (20, 34)}
    prefix = tmp_path / "box"
    subprocess.run([str(binary), "grow"], env=gcov_environment(prefix), check=True, capture_output=True)
    (counts,) = prefix.rglob("*.gcda")
    by_name = {f.ident: f.name for f in notes.functions}
    ran = {by_name[i]: state for i, state in read_counts(counts).items()}
    assert ran == {"grow": True, "shrink": False, "nothing": True, "main": True}

    recorder = Recorder(tmp_path / "src", tmp_path / "build")
    recorder.collect("qcow2-file/001", prefix)
    assert recorder.executed == {"qcow2-file/001": {("block/fake.c", "grow"), ("block/fake.c", "nothing"),
                                                    ("block/fake.c", "main")}}
    cmap = recorder.save(tmp_path / "map.json.gz", "QEMU 7.2.0 tests:x")
    again = load(tmp_path / "map.json.gz")
    assert again.files == {"block/fake.c": [Span("grow", 4, 7), Span("shrink", 10, 16), Span("nothing", 18, 18),
                                            Span("main", 20, 34)]}
    assert again.runs == cmap.runs and {again.table()[i][1].name for i in again.runs["qcow2-file/001"]} == \
        {"grow", "nothing", "main"}
    # a second recording of other runs keeps the first one's
    recorder2 = Recorder(tmp_path / "src", tmp_path / "build")
    recorder2.executed["qcow2-file/002"] = {("block/fake.c", "shrink")}
    assert sorted(recorder2.save(tmp_path / "map.json.gz", "QEMU 7.2.0 tests:x").runs) == \
        ["qcow2-file/001", "qcow2-file/002"]


DIFF = """\
diff --git a/block/qcow2.c b/block/qcow2.c
index 1111111..2222222 100644
--- a/block/qcow2.c
+++ b/block/qcow2.c
@@ -12 +12 @@ static int alpha(void)
-    return 1;
+    return 2;
@@ -30,0 +31,2 @@ static int beta(void)
+    int unused;
+    (void)unused;
@@ -41 +42 @@
--- a line that starts like a header
+++ and one more
diff --git a/block/new.c b/block/new.c
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/block/new.c
@@ -0,0 +1,3 @@
+int fresh(void)
+{
+}
diff --git a/block/old.c b/block/gone.c
similarity index 90%
rename from block/old.c
rename to block/gone.c
--- a/block/old.c
+++ b/block/gone.c
@@ -5 +5 @@
-x
+y
\\ No newline at end of file
"""


@pytest.mark.unit
def test_a_diff_gives_each_file_and_the_old_side_of_its_hunks() -> None:
    changes = {c.path: c for c in parse_diff(DIFF)}
    assert sorted(changes) == ["block/new.c", "block/old.c", "block/qcow2.c"]
    qcow2 = changes["block/qcow2.c"]
    # the "--- a line" inside the third hunk is a removed line, not a new file header
    assert qcow2.hunks == [Hunk(12, 1), Hunk(30, 0), Hunk(41, 1)] and qcow2.sections == 1
    assert (changes["block/new.c"].old, changes["block/new.c"].new) == (None, "block/new.c")
    assert (changes["block/old.c"].old, changes["block/old.c"].new) == ("block/old.c", "block/gone.c")
    assert changes["block/old.c"].hunks == [Hunk(5, 1)]
    # a mail with two patches touching one file: two sections
    mail = "Subject: [PATCH 1/2]\n\n" + DIFF.split("diff --git a/block/new.c")[0] + "-- \n2.39.5\n\n" + \
        "Subject: [PATCH 2/2]\n\n" + DIFF.split("diff --git a/block/new.c")[0]
    assert {c.path: c.sections for c in parse_diff(mail)} == {"block/qcow2.c": 2}


def _catalog(fake_tree: FakeTree) -> object:
    fake_tree.add_test("001", "echo ok\n. ./common.filter\n", out="ok\n")
    fake_tree.add_test("002", "echo ok\n", out="ok\n")
    fake_tree.add_test("003", "import iotests\n", out="", python=True)
    (fake_tree.iotests / "common.filter").write_text("# filters\n")
    (fake_tree.iotests / "iotests.py").write_text("# the Python library\n")
    return discover(fake_tree.iotests)


def _map() -> CoverageMap:
    files = {"block/qcow2.c": [Span("alpha", 10, 14), Span("beta", 20, 35)],
             "block/raw-format.c": [Span("gamma", 5, 9), Span("delta", 11, 40)]}
    # table order: qcow2.c alpha 0, beta 1; raw-format.c gamma 2, delta 3
    runs = {"qcow2-file/001": frozenset({0, 1}), "qcow2-file/002": frozenset({1}),
            "raw-file/001": frozenset({2}), "raw-file/002": frozenset({3}), "qcow2-file/003": frozenset()}
    return CoverageMap("QEMU 7.2.0 tests:x", "2026-11-30T09:00:00Z", files, {}, runs, frozenset({3}))


def _selected(result: Affected, cmap: CoverageMap, fake_tree: FakeTree) -> dict[str, str | None]:
    catalog = discover(fake_tree.iotests)
    table = cmap.table()
    return {f"{fmt}-file/{key}": result.why(Run(catalog.tests[key], fmt, "file"), cmap, table)
            for fmt in ("qcow2", "raw") for key in ("001", "002", "003")}


@pytest.mark.unit
def test_changed_functions_select_the_runs_that_executed_them(fake_tree: FakeTree) -> None:
    catalog = _catalog(fake_tree)
    cmap = _map()

    def pick(*changes: FileChange) -> dict[str, str | None]:
        return _selected(affected(changes, cmap, catalog), cmap, fake_tree)  # type: ignore[arg-type]

    inside_alpha = FileChange("block/qcow2.c", "block/qcow2.c", [Hunk(12, 1)])
    got = pick(inside_alpha)
    assert {k for k, v in got.items() if v} == {"qcow2-file/001", "raw-file/003"}  # raw-file/003: not mapped
    assert got["qcow2-file/001"] == "executes alpha (block/qcow2.c)"
    assert got["raw-file/003"] == "not in the coverage map"
    # a whole function deleted: its old lines are all inside it
    assert {k for k, v in pick(FileChange("block/qcow2.c", "block/qcow2.c", [Hunk(20, 16)])).items() if v} == \
        {"qcow2-file/001", "qcow2-file/002", "raw-file/003"}
    # lines inserted inside beta, and between alpha's and beta's lines (outside both)
    assert pick(FileChange("block/qcow2.c", "block/qcow2.c", [Hunk(25, 0)]))["qcow2-file/002"]
    edge = affected([FileChange("block/qcow2.c", "block/qcow2.c", [Hunk(14, 0)])], cmap, catalog)  # type: ignore
    assert edge.everything and "block/qcow2.c:14-15 changed outside any function" in edge.everything
    # a hunk reaching one line above a function (its return type, a comment): everything
    assert affected([FileChange("block/qcow2.c", "block/qcow2.c", [Hunk(9, 2)])], cmap, catalog).everything  # type: ignore
    # files the map does not hold: a header's macro, a new file, the build
    for path, old in (("include/block/block_int.h", "include/block/block_int.h"), ("block/new.c", None),
                      ("meson.build", "meson.build")):
        assert "no functions in the coverage map" in (affected([FileChange(old, path, [Hunk(1, 1)])], cmap,
                                                               catalog).everything or "")  # type: ignore
    # a file renamed, or changed by two patches of a series: all of its functions
    renamed = FileChange("block/qcow2.c", "block/qcow2-main.c", [Hunk(12, 1)])
    assert {k for k, v in pick(renamed).items() if v} == {"qcow2-file/001", "qcow2-file/002", "raw-file/003"}
    twice = FileChange("block/qcow2.c", "block/qcow2.c", [Hunk(12, 1)], sections=2)
    assert {k for k, v in pick(twice).items() if v} == {"qcow2-file/001", "qcow2-file/002", "raw-file/003"}
    # delta has no counters (uncounted): whether a run executed it is unknown, so everything runs
    uncounted = affected([FileChange("block/raw-format.c", "block/raw-format.c", [Hunk(20, 1)])], cmap, catalog)  # type: ignore
    assert "counters cannot tell" in (uncounted.everything or "")


@pytest.mark.unit
def test_changed_tests_and_helpers_select_the_tests_using_them(fake_tree: FakeTree) -> None:
    catalog = _catalog(fake_tree)
    cmap = _map()

    def tests(path: str) -> set[str]:
        result = affected([FileChange(path, path, [Hunk(1, 1)])], cmap, catalog)  # type: ignore[arg-type]
        assert result.everything is None, result.everything
        return set(result.tests)

    assert tests("tests/qemu-iotests/002") == {"002"}
    assert tests("tests/qemu-iotests/002.out") == {"002"}
    assert tests("tests/qemu-iotests/common.filter") == {"001"}
    assert tests("tests/qemu-iotests/common.rc") == {"001", "002"}
    assert tests("tests/qemu-iotests/iotests.py") == {"003"}
    assert tests("python/qemu/machine/machine.py") == {"003"}
    for machinery in ("tests/qemu-iotests/check", "tests/qemu-iotests/testenv.py",
                      "tests/qemu-iotests-runner/iotests_run/cli.py"):
        assert affected([FileChange(machinery, machinery, [Hunk(1, 1)])], cmap, catalog).everything  # type: ignore


def _gcov_tree(fake_tree: FakeTree) -> Path:
    """The fake tree's qemu-img is a gcov build of src/block/fake.c; tests 001 and 002 run it."""
    source = fake_tree.source / "block" / "fake.c"
    source.parent.mkdir(parents=True)
    source.write_text(FAKE_C)
    _gcov_binary(source, fake_tree.build)
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


# --- on the reference tree: a map from its gcov build, a patch to block/qcow2.c -----------------------------

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
