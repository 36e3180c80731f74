"""tree/discovery.py: the tests of a tree, check's selection rules, reference outputs, and names refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotests_run.errors import SetupError, UsageError
from iotests_run.tree.discovery import discover, reference_output
from support import FakeTree, expect_usage_error, run_cli, tree_args


@pytest.fixture
def tree(fake_tree: FakeTree) -> FakeTree:
    fake_tree.add_test("001", "", groups="rw auto quick")
    fake_tree.add_test("002", "", groups="rw quick")
    fake_tree.add_test("003", "", groups="rw disabled")
    fake_tree.add_test("010", "", groups="img")
    fake_tree.add_test("tests/named-one", "", groups="quick nbd")
    fake_tree.add_test("tests/no-output", "", out=None, groups="quick")
    return fake_tree


def keys(tests: list) -> list[str]:  # type: ignore[type-arg]
    return [t.key for t in tests]


@pytest.mark.unit
def test_finds_numbered_and_named_tests_with_output(tree: FakeTree) -> None:
    catalog = discover(tree.iotests)
    assert sorted(catalog.tests) == ["001", "002", "003", "010", "tests/named-one"]
    assert catalog.tests["tests/named-one"].groups == {"quick", "nbd"}


@pytest.mark.unit
def test_group_selection_excludes_disabled_and_sorts(tree: FakeTree) -> None:
    assert keys(discover(tree.iotests).select([], ["rw"], [])) == ["001", "002"]


@pytest.mark.unit
def test_disabled_is_selected_when_named_as_group(tree: FakeTree) -> None:
    assert keys(discover(tree.iotests).select([], ["disabled"], [])) == ["003"]


@pytest.mark.unit
def test_no_selection_means_all_but_disabled(tree: FakeTree) -> None:
    assert keys(discover(tree.iotests).select([], [], [])) == ["001", "002", "010", "tests/named-one"]


@pytest.mark.unit
def test_exclude_groups(tree: FakeTree) -> None:
    assert keys(discover(tree.iotests).select([], ["quick"], ["auto"])) == ["002", "tests/named-one"]


@pytest.mark.unit
def test_named_tests_are_added_after_exclusion(tree: FakeTree) -> None:
    assert keys(discover(tree.iotests).select(["1", "3"], ["quick"], ["auto"])) == [
        "001", "002", "003", "tests/named-one"]


@pytest.mark.unit
def test_short_numbers_and_names(tree: FakeTree) -> None:
    assert keys(discover(tree.iotests).select(["10", "named-one"], [], [])) == ["010", "tests/named-one"]


@pytest.mark.unit
def test_start_from_keeps_that_test_and_those_after_it_in_checks_order(tree: FakeTree) -> None:
    catalog = discover(tree.iotests)
    assert keys(catalog.select([], [], [], start_from="2")) == ["002", "010", "tests/named-one"]
    assert keys(catalog.select([], ["quick"], [], start_from="named-one")) == ["tests/named-one"]
    with pytest.raises(UsageError, match="--start-from 10: not among the selected tests"):
        catalog.select([], ["rw"], [], start_from="10")
    with pytest.raises(UsageError, match="unknown test: 999"):
        catalog.select([], [], [], start_from="999")


@pytest.mark.process
def test_start_from_and_dry_run_on_the_command_line(tree: FakeTree, tmp_path: Path) -> None:
    """check's `--start-from 010 -n`: the plan of 010 and the tests after it; bad uses: one line, exit 2."""
    results = tmp_path / "r"
    for dry in ("-n", "--dry-run", "--list"):
        proc = run_cli(["--start-from", "010", dry, *tree_args(tree, results)])
        assert proc.returncode == 0, proc.stderr
        assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == ["010", "named-one"]
    expect_usage_error(tmp_path, ["-g", "img", "--start-from", "1", *tree_args(tree, results)],
                       "--start-from 1: not among the selected tests")
    expect_usage_error(tmp_path, ["--start-from", "1", "--last-failed", *tree_args(tree, results)],
                       "--start-from with --last-failed")


@pytest.mark.unit
def test_exclude_with_bare_test_list_is_refused(tree: FakeTree) -> None:
    with pytest.raises(UsageError, match="cannot exclude"):
        discover(tree.iotests).select(["001"], [], ["rw"])


@pytest.mark.unit
@pytest.mark.parametrize(("names", "groups", "exclude", "message"), [
    (["999"], [], [], "unknown test: 999"),
    (["no-output"], [], [], "unknown test: no-output"),
    (["tests/named-one"], [], [], "unknown test: tests/named-one"),
    ([], ["nosuch"], [], "unknown group: nosuch"),
    ([], ["quick"], ["nosuch"], "unknown group: nosuch"),
])
def test_unknown_names(tree: FakeTree, names: list[str], groups: list[str], exclude: list[str],
                       message: str) -> None:
    with pytest.raises(UsageError, match=message):
        discover(tree.iotests).select(names, groups, exclude)


@pytest.mark.unit
def test_group_local_adds_groups(tree: FakeTree) -> None:
    (tree.iotests / "group.local").write_text("# comment\n\n010 quick mine\nnamed-one mine\n")
    catalog = discover(tree.iotests)
    assert keys(catalog.select([], ["mine"], [])) == ["010", "tests/named-one"]
    assert "quick" in catalog.tests["010"].groups


@pytest.mark.unit
def test_group_local_with_unknown_test_is_a_setup_error(tree: FakeTree) -> None:
    (tree.iotests / "group.local").write_text("123 quick\n")
    with pytest.raises(SetupError, match=r"group\.local:1: unknown test: 123"):
        discover(tree.iotests)


@pytest.mark.unit
def test_group_line_must_start_the_line(fake_tree: FakeTree) -> None:
    path = fake_tree.add_test("004", "", groups="quick")
    path.write_text("#!/bin/bash\n#  group: quick\n# group: rw\n# group: img\n")
    assert discover(fake_tree.iotests).tests["004"].groups == {"rw"}


@pytest.mark.process
def test_a_test_named_with_markup_is_refused(pass_fail_tree: FakeTree, tmp_path: Path) -> None:
    pass_fail_tree.add_test('tests/x"><img src=x onerror=alert(1)>', "echo hi\n", out="hi\n")
    expect_usage_error(tmp_path, tree_args(pass_fail_tree, tmp_path / "r"), "refused test", "letters, digits and -_.")
    (pass_fail_tree.iotests / 'tests/x"><img src=x onerror=alert(1)>').unlink()
    pass_fail_tree.add_test("tests/ok\nok 99 forged", "echo hi\n", out="hi\n")
    expect_usage_error(tmp_path, tree_args(pass_fail_tree, tmp_path / "r"), "refused test", "ok\\nok 99 forged")


@pytest.mark.process
def test_folders_and_dangling_links_named_like_tests_are_no_tests(pass_fail_tree: FakeTree, tmp_path: Path) -> None:
    (pass_fail_tree.iotests / "003").mkdir()
    (pass_fail_tree.iotests / "004").symlink_to(pass_fail_tree.iotests / "gone")
    (pass_fail_tree.iotests / "tests").mkdir(exist_ok=True)
    (pass_fail_tree.iotests / "tests" / "dir").mkdir()
    Path(f"{pass_fail_tree.iotests}/tests/dir.out").write_text("")
    proc = run_cli(tree_args(pass_fail_tree, tmp_path / "r", "-g", "quick"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.rstrip().endswith("1 passed, 1 failed, 0 skipped")


@pytest.mark.unit
def test_reference_order(tmp_path: Path) -> None:
    test = tmp_path / "040"
    assert reference_output(test, "qcow2", "pc", "writeback") == Path(f"{test}.out")
    Path(f"{test}.out").write_text("")
    Path(f"{test}.pc.out").write_text("")
    assert reference_output(test, "qcow2", "pc", "writeback") == Path(f"{test}.pc.out")
    Path(f"{test}.out.qcow2").write_text("")
    assert reference_output(test, "qcow2", "pc", "writeback") == Path(f"{test}.out.qcow2")
    assert reference_output(test, "raw", "pc", "writeback") == Path(f"{test}.pc.out")
    Path(f"{test}.out.nocache").write_text("")
    assert reference_output(test, "qcow2", "pc", "writeback") == Path(f"{test}.out.qcow2")
    assert reference_output(test, "qcow2", "pc", "none") == Path(f"{test}.out.nocache")
