"""Bad input: one line naming the bad value, exit status 2, no traceback, no test started."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from support import FakeTree, expect_usage_error, run_cli, tree_args

pytestmark = pytest.mark.process


@pytest.fixture
def tree(fake_tree: FakeTree, tmp_path: Path) -> FakeTree:
    # The test leaves a mark if it is ever started: none of these cases may start it.
    fake_tree.add_test("001", f"touch {tmp_path}/started\n", groups="quick rw")
    return fake_tree


Case = Callable[[FakeTree, Path], tuple[list[str], tuple[str, ...]]]


CASES: dict[str, Case] = {
    "unknown format": lambda t, r: (["-f", "qcow2,qcow3", *t.args(r)], ("unknown format: qcow3",)),
    "unknown protocol": lambda t, r: (["-p", "ftp", *t.args(r)], ("unknown protocol: ftp",)),
    "unknown group": lambda t, r: (["-g", "quick,slowest", *t.args(r)], ("unknown group: slowest",)),
    "unknown excluded group": lambda t, r: (["-g", "quick", "-x", "nogroup", *t.args(r)],
                                            ("unknown group: nogroup",)),
    "unknown test": lambda t, r: (["001", "777", *t.args(r)], ("unknown test: 777",)),
    "jobs zero": lambda t, r: (["-j", "0", *t.args(r)], ("-j", "0")),
    "jobs not a number": lambda t, r: (["-j", "many", *t.args(r)], ("many",)),
    "timeout zero": lambda t, r: (["--timeout", "0", *t.args(r)], ("--timeout", "0")),
    "hang timeout not a number": lambda t, r: (["--hang-timeout", "soon", *t.args(r)], ("soon",)),
    "negative hang factor": lambda t, r: (["--hang-factor", "-1", *t.args(r)], ("--hang-factor", "-1")),
    "negative multiplier": lambda t, r: (["--timeout-multiplier", "-2", *t.args(r)], ("-2",)),
    "scratch with a dot": lambda t, r: (["--scratch", "/tmp/a.b", *t.args(r)], ("--scratch", "/tmp/a.b")),
    "unknown option": lambda t, r: (["--frobnicate", *t.args(r)], ("--frobnicate",)),
    "unknown cache mode": lambda t, r: (["-c", "sometimes", *t.args(r)], ("-c/--cache", "sometimes")),
    "unknown aio mode": lambda t, r: (["-i", "posix", *t.args(r)], ("-i/--aio", "posix")),
    "cache and nocache": lambda t, r: (["-c", "none", "--nocache", *t.args(r)], ("--nocache",)),
    "pass-env not a name": lambda t, r: (["--pass-env", "A=B", *t.args(r)], ("--pass-env", "A=B")),
    "load negative": lambda t, r: (["--load", "-1", *t.args(r)], ("--load", "-1")),
    "repeat zero": lambda t, r: (["--repeat", "0", *t.args(r)], ("--repeat", "0")),
    "repeat with retry": lambda t, r: (["--repeat", "3", "--retry", "1", *t.args(r)], ("--repeat", "--retry")),
    "repeat with last-failed": lambda t, r: (["--repeat", "3", "--last-failed", *t.args(r)],
                                            ("--repeat", "--last-failed")),
    "until-fail alone": lambda t, r: (["--until-fail", *t.args(r)], ("--until-fail", "--repeat")),
    "keep-failures negative": lambda t, r: (["--repeat", "2", "--keep-failures", "-1", *t.args(r)],
                                           ("--keep-failures", "-1")),
    "missing source": lambda t, r: (["--qemu-source", str(r / "nowhere"), "--qemu-build", str(t.build)],
                                    (str(r / "nowhere"),)),
    "not a QEMU source": lambda t, r: (["--qemu-source", str(t.build), "--qemu-build", str(t.build)],
                                       ("not a QEMU source tree", str(t.build))),
    "missing build": lambda t, r: (["--qemu-source", str(t.source), "--qemu-build", str(r / "nobuild")],
                                   (str(r / "nobuild"),)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(tree: FakeTree, tmp_path: Path, name: str) -> None:
    args, needles = CASES[name](tree, tmp_path / "results")
    expect_usage_error(tmp_path, args, *needles)


def test_build_without_a_binary(tree: FakeTree, tmp_path: Path) -> None:
    (tree.build / "qemu-io").unlink()
    expect_usage_error(tmp_path, tree.args(tmp_path / "r"), str(tree.build / "qemu-io"))


def test_build_with_a_binary_not_executable(tree: FakeTree, tmp_path: Path) -> None:
    (tree.build / "qemu-nbd").chmod(0o644)
    expect_usage_error(tmp_path, tree.args(tmp_path / "r"), "not executable", str(tree.build / "qemu-nbd"))


def test_build_without_qemu_system(tree: FakeTree, tmp_path: Path) -> None:
    (tree.build / "qemu-system-x86_64").unlink()
    expect_usage_error(tmp_path, tree.args(tmp_path / "r"), "qemu-system")


def test_unwritable_results_folder(tree: FakeTree, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    expect_usage_error(tmp_path, tree.args(blocker / "results"), "results folder", str(blocker / "results"))


def test_no_tree_anywhere_says_how_to_get_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("QEMU_SOURCE", "QEMU_BUILD")}
    env["IOTESTS_RUN_CACHE"] = str(tmp_path / "empty-cache")
    expect_usage_error(tmp_path, [], "tools/build-reference-qemu", env=env)


def test_tree_from_environment(tree: FakeTree, tmp_path: Path) -> None:
    env = dict(os.environ, QEMU_SOURCE=str(tree.source), QEMU_BUILD=str(tree.build))
    proc = run_cli(["--results", str(tmp_path / "r")], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "started").exists()


def test_bad_shard_from_gitlab_names_the_variables(tree: FakeTree, tmp_path: Path) -> None:
    env = dict(os.environ, CI_NODE_INDEX="5", CI_NODE_TOTAL="2")
    expect_usage_error(tmp_path, tree.args(tmp_path / "r"), "CI_NODE_INDEX=5", "CI_NODE_TOTAL=2", env=env)


def test_a_gitlab_job_without_parallel_runs_the_whole_plan(tree: FakeTree, tmp_path: Path) -> None:
    # GitLab sets CI_NODE_TOTAL=1 in a job without `parallel:`; gitlab-ci-local sets an index beside it
    for index in ("", "1", "2"):
        env = dict(os.environ, CI_NODE_INDEX=index, CI_NODE_TOTAL="1")
        proc = run_cli(tree.args(tmp_path / f"r{index}"), env=env)
        assert proc.returncode == 0 and "shard" not in proc.stdout.lower(), proc.stdout + proc.stderr


def test_bad_option_from_iotests_run_args(tree: FakeTree, tmp_path: Path) -> None:
    env = dict(os.environ, IOTESTS_RUN_ARGS="--retry lots")
    proc = run_cli(tree.args(tmp_path / "r"), env=env)
    assert proc.returncode == 2 and "lots" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_bisect_exit_codes(tree: FakeTree, tmp_path: Path) -> None:
    """git bisect run: an unusable tree skips the commit (125), a bad command line stops the bisection (>127)."""
    (tree.build / "qemu-io").unlink()
    proc = run_cli([*tree.args(tmp_path / "r"), "--bisect"], cwd=tmp_path)
    assert proc.returncode == 125 and "qemu-io" in proc.stderr, proc.stderr
    proc = run_cli([*tree.args(tmp_path / "r"), "--bisect", "--frobnicate"], cwd=tmp_path)
    assert proc.returncode == 128 and "--frobnicate" in proc.stderr
    assert run_cli(tree.args(tmp_path / "r"), cwd=tmp_path).returncode == 2  # without --bisect: as always


def test_bad_files_and_values_named_on_the_command_line(pass_fail_tree: FakeTree, tmp_path: Path) -> None:
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"002 qcow2-file # caf\xe9\n")
    expect_usage_error(tmp_path, tree_args(pass_fail_tree, tmp_path / "r", "--quarantine", str(latin)), "not UTF-8")
    expect_usage_error(tmp_path, tree_args(pass_fail_tree, tmp_path / "r", "--quarantine", "/dev/zero"),
                       "not a regular file")
    expect_usage_error(tmp_path, tree_args(pass_fail_tree, tmp_path / "r", "--shard", "1/1000000000"), "bad shard")
    env = dict(os.environ, IOTESTS_RUN_JOBS="abc")
    expect_usage_error(tmp_path, tree_args(pass_fail_tree, tmp_path / "r"), "IOTESTS_RUN_JOBS: abc", env=env)
    env = dict(os.environ, IOTESTS_RUN_ARGS="-f raw")
    proc = run_cli(tree_args(pass_fail_tree, tmp_path / "r", "001", "-f", "qcow2"), env=env)
    assert proc.returncode == 0 and "qcow2-file" in proc.stdout and "raw-file" not in proc.stdout, proc.stdout
