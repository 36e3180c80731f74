"""run/sandbox.py: where sandboxes go and how they are removed (mounts, links, locked folders)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import FakeTree, run_cli, tree_args


@pytest.mark.unit
def test_scratch_sits_on_the_build_folders_file_system(tmp_path: Path) -> None:
    from iotests_run.run.sandbox import SCRATCH_CANDIDATES, default_scratch

    on_tmp = Path("/tmp")
    assert default_scratch(on_tmp) == on_tmp
    shm = Path("/dev/shm")
    if shm.is_dir() and shm.stat().st_dev != on_tmp.stat().st_dev:
        # a build folder on tmpfs gets its sandboxes on tmpfs too, where check's TEST_DIR would be
        assert default_scratch(shm) == shm
    assert default_scratch(tmp_path / "no-such-build") == on_tmp
    assert SCRATCH_CANDIDATES[0] == "/tmp"


@pytest.mark.unit
@pytest.mark.process
def test_mounts_left_under_a_sandbox_are_released(tmp_path: Path) -> None:
    """The no-namespace fallback: what a run left mounted (a FUSE export, here a tmpfs) is lazily unmounted."""
    import os

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root to mount (a private mount namespace keeps the machine's mounts untouched)")
    box = tmp_path / "box"
    (box / "scratch" / "export" / "inner").mkdir(parents=True)
    script = (f"mount -t tmpfs none {box}/scratch/export && mkdir {box}/scratch/export/inner && "
              f"mount -t tmpfs none {box}/scratch/export/inner && "
              f"{sys.executable} -c 'from pathlib import Path; from iotests_run.run.sandbox import release_mounts; "
              f"print(len(release_mounts(Path(\"{box}\"))))' && grep -c ' {box}/' /proc/self/mountinfo")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert proc.stdout.split() == ["2", "0"], proc.stdout + proc.stderr  # two released, none left


@pytest.mark.process
def test_bind_mount_source_survives_sandbox_cleanup_through_a_symlinked_scratch(fake_tree: FakeTree,
                                                                                 tmp_path: Path) -> None:
    """--no-isolation --scratch LINK: a passing test's bind mount is released, never emptied through."""

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root to bind-mount (inside a private mount namespace)")
    import tempfile

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))  # sandboxes need short paths (unix sockets)
    (short / "real").mkdir()
    (short / "link").symlink_to(short / "real")
    fake_tree.add_test("001", f'mkdir "$TEST_DIR/m" && mount --bind {precious} "$TEST_DIR/m" && echo ok\n', out="ok\n")
    argv = [sys.executable, "-m", "iotests_run", "001", "--no-isolation", "--scratch", str(short / "link"),
            *tree_args(fake_tree, tmp_path / "results")]
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (precious / "data.txt").read_text() == "keep me"
    assert not list((short / "real").iterdir())  # and the sandbox is gone
    shutil.rmtree(short)


@pytest.mark.process
def test_removal_never_crosses_a_mount_even_when_it_cannot_be_released(tmp_path: Path) -> None:

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root to bind-mount (inside a private mount namespace)")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep me")
    (tmp_path / "box" / "deep" / "m").mkdir(parents=True)
    (tmp_path / "box" / "file").write_text("ours")
    code = (f"from pathlib import Path; from iotests_run.run.sandbox import remove_tree; "
            f"print(remove_tree(Path('{tmp_path}/box')))")
    script = f"mount --bind {tmp_path}/precious {tmp_path}/box/deep/m && {sys.executable} -c \"{code}\""
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert proc.stdout.split() == ["False"], proc.stdout + proc.stderr  # the mount kept its folders
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep me"
    assert not (tmp_path / "box" / "file").exists()  # what was ours is gone


@pytest.mark.process
def test_locked_folders_a_test_leaves_do_not_change_its_verdict(fake_tree: FakeTree, tmp_path: Path) -> None:
    """As non-root: a mode-000 file and read-only folders in TEST_DIR, on a pass and on a failure."""

    top = Path(os.environ.get("TMPDIR", "/tmp")) / f"iotr-nonroot-{os.getpid()}"
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir(mode=0o777)
    top.chmod(0o777)
    try:
        from support import make_fake_tree

        tree = make_fake_tree(top / "t")
        lock = ('mkdir -p "$TEST_DIR/ro/inner" && echo x > "$TEST_DIR/ro/inner/f" && chmod 000 "$TEST_DIR/ro/inner/f" '
                '&& chmod 500 "$TEST_DIR/ro/inner" "$TEST_DIR/ro" && chmod 500 "$TEST_DIR"\n')
        tree.add_test("001", lock + "echo ok\n", out="ok\n")
        tree.add_test("002", lock + "echo bad\n", out="ok\n")
        for d in [top, *top.rglob("*")]:
            if d.is_dir():
                d.chmod(0o777)
        scratch = top / "scratch"
        scratch.mkdir(mode=0o777)
        scratch.chmod(0o777)
        for _ in range(2):  # the second time, nothing the first left gets in the way
            argv = ["001", "002", *tree.args(top / "results"), "--history", str(top / "h.json"),
                    "--scratch", str(scratch), "--no-isolation"]
            proc = run_cli(argv, cwd=top, as_nobody=True, env=dict(os.environ, HOME=str(top)))
            assert proc.returncode == 1, proc.stdout + proc.stderr
            runs = {r["test"]: r for r in json.loads((top / "results" / "results.json").read_text())["runs"]}
            assert (runs["001"]["outcome"], runs["002"]["outcome"]) == ("pass", "fail"), runs
            assert "runner error" not in runs["002"]["reason"]
            assert (top / "results" / "runs" / "qcow2-file" / "002" / "scratch" / "ro" / "inner").is_dir()
            assert not list(scratch.iterdir())  # no sandbox left behind
    finally:
        for d in top.rglob("*"):
            if d.is_dir() and not d.is_symlink():
                d.chmod(0o700)
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.process
@pytest.mark.parametrize("verdict", ["pass", "fail"])
def test_cleanup_never_follows_a_symlink_out_of_the_sandbox(fake_tree: FakeTree, tmp_path: Path, verdict: str) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    fake_tree.add_test("001", f'ln -s {outside} "$TEST_DIR/link"\nln -s {outside} "$SOCK_DIR/link"\n'
                              f'echo {verdict}\n', out="pass\n")
    proc = run_cli(["001", *fake_tree.args(tmp_path / "results")])
    assert proc.returncode == (0 if verdict == "pass" else 1), proc.stdout
    assert (outside / "keep.txt").read_text() == "mine"
