"""cli/shell_command.py: `iotests-run shell [-f FMT] [-p PROTO] [-- CMD]`, check's `check -- CMD` in one sandbox."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from iotests_run.errors import UsageError
from support import FakeTree, expect_usage_error, run_cli


def tree_options(tree: FakeTree) -> list[str]:
    return ["--qemu-source", str(tree.source), "--qemu-build", str(tree.build)]


@pytest.mark.unit
def test_the_command_is_what_follows_the_double_dash() -> None:
    from iotests_run.cli.shell_command import split_command

    assert split_command(["-f", "raw", "--", "sh", "-c", "echo -- x"]) == (["-f", "raw"], ["sh", "-c", "echo -- x"])
    assert split_command(["-f", "raw"]) == (["-f", "raw"], [])
    with pytest.raises(UsageError, match="nothing after '--'"):
        split_command(["-f", "raw", "--"])


@pytest.mark.process
def test_shell_runs_the_command_in_a_sandbox_with_the_tests_environment(fake_tree: FakeTree, tmp_path: Path) -> None:
    """`shell -- sh -c 'echo $IMGFMT $TEST_DIR'` prints the sandbox's values; the exit status is CMD's; the
    sandbox is fresh, private and removed afterwards; check's options shape the environment as for a run."""
    script = ('echo "$IMGFMT $IMGPROTO $TEST_DIR"; echo "$QEMU_IO_OPTIONS|$VALGRIND_QEMU|$PWD"; '
              'test -d "$SOCK_DIR" && test -d "$TMPDIR" && test -z "$(ls -A "$TEST_DIR")" || exit 9; exit 3')
    proc = run_cli(["shell", "-f", "raw", "--misalign", "--valgrind", *tree_options(fake_tree),
                    "--", "sh", "-c", script], cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    first, second = proc.stdout.splitlines()
    fmt, proto, test_dir = first.split(" ")
    assert (fmt, proto) == ("raw", "file") and test_dir.endswith("/shell/scratch")
    assert second == f"--cache writeback --aio threads --misalign -f raw|y|{fake_tree.iotests}"
    assert f"TEST_DIR={test_dir}" in proc.stderr
    assert not Path(test_dir).exists() and not Path(test_dir).parent.parent.exists()


@pytest.mark.process
def test_shell_without_a_command_starts_the_users_shell(fake_tree: FakeTree, tmp_path: Path) -> None:
    shell = tmp_path / "myshell"
    shell.write_text('#!/bin/sh\necho "my shell in $IMGFMT"\n')
    shell.chmod(0o755)
    proc = run_cli(["shell", *tree_options(fake_tree)], cwd=tmp_path, env=dict(os.environ, SHELL=str(shell)))
    assert (proc.returncode, proc.stdout) == (0, "my shell in qcow2\n"), proc.stderr


@pytest.mark.process
@pytest.mark.parametrize(("args", "needle"), [
    (["-f", "nosuch"], "shell: unknown format: nosuch"),
    (["-p", "nosuch"], "shell: unknown protocol: nosuch"),
    (["--", "no-such-command-here"], "shell: command not found: no-such-command-here"),
    (["--"], "shell: nothing after '--'"),
    (["-j", "2"], "unrecognized arguments: -j 2"),
])
def test_bad_shell_invocations_are_one_line(fake_tree: FakeTree, tmp_path: Path, args: list[str],
                                            needle: str) -> None:
    head, _, tail = " ".join(args).partition("--")
    argv = ["shell", *head.split(), *tree_options(fake_tree), *(["--", *tail.split()] if "--" in args else [])]
    expect_usage_error(tmp_path, argv, needle)
