"""affected/selection.py: diffs mapped onto functions and tests, hunk headers and diff files of any shape."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from iotests_run.affected.coverage_map import CoverageMap, Span, source_digest
from iotests_run.affected.diff import FileChange, Hunk, parse_diff
from iotests_run.affected.selection import Affected, ChangeOptions, affected, choose_runs
from iotests_run.errors import UsageError
from iotests_run.model import Run
from iotests_run.tree.discovery import Catalog, discover
from support import ALPHA_C, MAP_TREE, FakeTree, catalog_of_two, map_json, one_file_diff, run_cli, write_map

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
def test_the_runs_most_specific_to_the_change_come_first_short_before_long(fake_tree: FakeTree) -> None:
    from iotests_run.affected.selection import ChangeSelection
    from iotests_run.plan.planner import closest_first

    catalog = _catalog(fake_tree)
    cmap = _map()
    # beta changed (qcow2-file/001 runs alpha and beta, 002 only beta), and test 003 itself
    change = affected([FileChange("block/qcow2.c", "block/qcow2.c", [Hunk(25, 1)]),
                       FileChange("tests/qemu-iotests/003", "tests/qemu-iotests/003", [Hunk(1, 1)])],
                      cmap, catalog)  # type: ignore[arg-type]
    tests = discover(fake_tree.iotests).tests
    runs = [Run(tests[k], "qcow2", "file") for k in ("001", "002", "003")]
    selection = ChangeSelection(change, cmap, "a diff")
    kept, _, _ = selection.split(runs)
    rank = selection.ranks(kept)
    assert rank[runs[2]] == (0, 0) and rank[runs[1]] == (1, 1) and rank[runs[0]] == (1, 2)
    # its own test changed first, then the run executing fewest functions, whatever their length
    cost = {runs[0]: 1.0, runs[1]: 30.0, runs[2]: 50.0}
    assert [r.test.key for r in closest_first(kept, rank, cost)] == ["003", "002", "001"]
    # equally specific: the shorter first
    even = {r: (1, 1) for r in kept}
    assert [r.test.key for r in closest_first(kept, even, cost)] == ["001", "002", "003"]


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


def _cmap() -> CoverageMap:
    files = {"block/qcow2.c": [Span("alpha", 10, 14), Span("beta", 20, 35)]}
    return CoverageMap(MAP_TREE, "2026-01-01T00:00:00Z", files, {}, {"qcow2-file/001": frozenset({0}),
                                                               "qcow2-file/002": frozenset({1})})


def _runs(catalog: Catalog) -> list[Run]:
    return [Run(catalog.tests[k], "qcow2", "file") for k in ("001", "002")]


@pytest.mark.unit
def test_a_hunk_claiming_two_billion_lines_is_a_range_not_a_set(fake_tree: FakeTree) -> None:
    catalog = catalog_of_two(fake_tree)
    (change,) = parse_diff(one_file_diff("@@ -20,2000000000 +20 @@"))
    assert change.hunks == [Hunk(20, 2_000_000_000)]
    # it reaches far beyond beta: everything, decided without a set of two billion lines
    result = affected([change], _cmap(), catalog)
    assert result.everything and "block/qcow2.c:20 changed outside any function" in result.everything
    # and one wholly inside a function as long: that function only
    wide = CoverageMap(MAP_TREE, "2026", {"block/qcow2.c": [Span("huge", 1, 3_000_000_000), Span("next", 3_000_000_001,
                                                                                             4_000_000_000)]}, {},
                       {"qcow2-file/001": frozenset({1})})
    inside = affected([FileChange("block/qcow2.c", "block/qcow2.c", [Hunk(5, 2_000_000_000)])], wide, catalog)
    assert inside.everything is None and inside.functions == frozenset({0})
    across = affected([FileChange("block/qcow2.c", "block/qcow2.c", [Hunk(2_000_000_000, 2_000_000_000)])], wide,
                      catalog)
    assert across.everything is None and across.functions == frozenset({0, 1})  # two adjacent spans hold it


@pytest.mark.unit
def test_a_huge_hunk_with_fallback_selects_every_run(fake_tree: FakeTree, tmp_path: Path) -> None:
    catalog = catalog_of_two(fake_tree)
    cmap = write_map(tmp_path / "map.json.gz", map_json())
    patch = tmp_path / "p.patch"
    patch.write_text(one_file_diff("@@ -20,2000000000 +20 @@"))
    warned: list[str] = []
    options = ChangeOptions(None, patch, cmap, fallback=True)
    chosen = choose_runs(_runs(catalog), fake_tree.source, catalog, MAP_TREE, options, warned.append)
    assert len(chosen.kept) == 2 and "2 of 2 runs affected" in chosen.line and "changed outside" in chosen.line
    assert not warned


@pytest.mark.unit
@pytest.mark.parametrize("number", ["9" * 5000, "3000000000", "2147483649"])
def test_a_hunk_number_beyond_two_to_the_31_is_a_usage_error_naming_the_diff(number: str) -> None:
    for header in (f"@@ -{number},3 +20 @@", f"@@ -20,{number} +20 @@", f"@@ -20,3 +{number},1 @@",
                   f"@@ -20,3 +20,{number} @@"):
        with pytest.raises(UsageError) as caught:
            parse_diff(one_file_diff(header), "series.patch")
        message = str(caught.value)
        assert message.startswith("series.patch: line 4: a hunk header's line number beyond 2147483648"), message
        assert len(message) < 200 and "\n" not in message
    assert parse_diff(one_file_diff("@@ -2147483648,1 +1 @@"))[0].hunks == [Hunk(2_147_483_648, 1)]


@pytest.mark.unit
def test_a_hunk_counting_too_many_lines_swallows_no_later_file(fake_tree: FakeTree) -> None:
    text = one_file_diff("@@ -11,900 +11,900 @@") + one_file_diff("@@ -1 +1 @@", "meson.build")
    changes = {c.path: c for c in parse_diff(text)}
    assert sorted(changes) == ["block/qcow2.c", "meson.build"] and changes["meson.build"].hunks == [Hunk(1, 1)]
    later_first = one_file_diff("@@ -1 +1 @@", "meson.build") + one_file_diff("@@ -12 +12 @@")
    selected = affected(parse_diff(later_first), _cmap(), catalog_of_two(fake_tree))
    assert "meson.build changed" in (selected.everything or "")


@pytest.mark.process
def test_a_5000_digit_hunk_header_is_one_line_and_exit_2(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    cmap = write_map(tmp_path / "map.json.gz", map_json())
    patch = tmp_path / "p.patch"
    patch.write_text(one_file_diff(f"@@ -{'9' * 5000},3 +20 @@"))
    proc = run_cli(["--list", "--affected-by-diff", str(patch), "--coverage-map", str(cmap),
                    *fake_tree.args(tmp_path / "r")])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"{patch}: line 4: a hunk header's line number beyond" in proc.stderr


@pytest.mark.process
def test_an_empty_affected_by_is_a_usage_error_and_leaves_the_map_alone(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    cmap = write_map(tmp_path / "map.json.gz", map_json())
    before = cmap.read_bytes()
    for extra in ([], ["--affected-by-fallback"]):
        proc = run_cli(["--coverage-map", str(cmap), "--affected-by", "", *extra, *fake_tree.args(tmp_path / "r")])
        assert proc.returncode == 2 and "--affected-by: an empty revision" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1
    assert cmap.read_bytes() == before and not (tmp_path / "r").exists()


GIT_BINARY = """\
diff --git a/block/qcow2.c b/block/qcow2.c
index 1111111..2222222 100644
GIT binary patch
literal 12
TcmZ?wbaPF}O

literal 10
RcmZ?wbaPF}O
"""


@pytest.mark.unit
@pytest.mark.parametrize("text", [
    GIT_BINARY,
    "diff --git a/block/qcow2.c b/block/qcow2.c\nindex 1111111..2222222 100644\n"
    "Binary files a/block/qcow2.c and b/block/qcow2.c differ\n",
    "Binary files a/block/qcow2.c and b/block/qcow2.c differ\n",
])
def test_a_binary_change_to_a_mapped_file_selects_every_run(fake_tree: FakeTree, text: str) -> None:
    catalog = catalog_of_two(fake_tree)
    (change,) = parse_diff(text)
    assert change.path == "block/qcow2.c" and change.binary and not change.hunks
    result = affected([change], _cmap(), catalog)
    assert result.everything == "block/qcow2.c changed as binary data, which the coverage map cannot place"
    assert all(result.why(run, _cmap(), _cmap().table()) for run in _runs(catalog))


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@invalid", *args], cwd=cwd, check=True,
                   capture_output=True)


def _git_tree(fake_tree: FakeTree, tmp_path: Path) -> tuple[Path, list[str]]:
    """The fake tree in git with a mapped block/fake.c (alpha: lines 1-4) that 001 executed."""
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fake_tree.add_test("002", "echo ok\n", out="ok\n")
    (fake_tree.source / "block").mkdir()
    (fake_tree.source / "block" / "fake.c").write_text(ALPHA_C)
    cmap = write_map(tmp_path / "map.json.gz", map_json(
        files={"block/fake.c": [["alpha", 1, 4]]}, digests={"block/fake.c": source_digest(ALPHA_C.encode())},
        runs={"qcow2-file/001": base64.b64encode(b"\x01").decode(), "qcow2-file/002": ""}))
    _git(fake_tree.source, "init", "-q")
    _git(fake_tree.source, "add", "-A")
    _git(fake_tree.source, "commit", "-qm", "base")
    return cmap, ["--list", "--coverage-map", str(cmap), *fake_tree.args(tmp_path / "r")]


@pytest.mark.process
def test_git_saying_binary_files_differ_selects_every_run(fake_tree: FakeTree, tmp_path: Path) -> None:
    _cmap_file, args = _git_tree(fake_tree, tmp_path)
    proc = run_cli(["--affected-by", "HEAD", *args])
    assert proc.returncode == 0 and "0 of 2 runs affected by git diff HEAD" in proc.stderr, proc.stderr  # no change
    (fake_tree.source / "block" / "fake.c").write_bytes(ALPHA_C.encode() + b"\0\x01binary\0")
    proc = run_cli(["--affected-by", "HEAD", *args])
    assert proc.returncode == 0 and "2 of 2 runs affected by git diff HEAD" in proc.stderr, proc.stderr
    assert "changed as binary data" in proc.stdout


@pytest.mark.process
@pytest.mark.parametrize("content", [b"", b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n",
                                     b"Subject: [PATCH 0/3] cover letter\n\nno patch here\n"])
def test_a_diff_file_with_no_diff_is_one_line_and_exit_2(fake_tree: FakeTree, tmp_path: Path,
                                                          content: bytes) -> None:
    _cmap_file, args = _git_tree(fake_tree, tmp_path)
    page = tmp_path / "series.patch"
    page.write_bytes(content)
    proc = run_cli(["--affected-by-diff", str(page), *args])
    assert proc.returncode == 2 and f"--affected-by-diff {page}: no diff in it" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1
