"""run/adoption.py: daemons that drop the marker, caught without cgroups."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from support import FakeTree, run_cli, tree_args

pytestmark = pytest.mark.process


# A daemon that strips the environment (and so the marker) and leaves the test's session.
STRIPPED = 'setsid env -i {what} </dev/null >/dev/null 2>&1 &\nsleep 0.5\necho ok\n'


def sleepers(tag: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if tag in " ".join(p.info["cmdline"] or [])]


def test_a_daemon_without_the_marker_is_still_caught_without_cgroups(fake_tree: FakeTree, tmp_path: Path) -> None:
    tag = f"36{os.getpid() % 1000:03}"  # a sleep nobody else runs
    fake_tree.add_test("001", STRIPPED.format(what=f"sleep {tag}1"), out="ok\n")
    fake_tree.add_test("002", f"env -i sleep {tag}2 </dev/null >/dev/null 2>&1 &\nsleep 0.5\necho ok\n", out="ok\n")
    fake_tree.add_test("003", "sleep 0.3\necho ok\n", out="ok\n")
    proc = run_cli(tree_args(fake_tree, tmp_path / "r", "--no-isolation", "-j", "1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {r["test"]: r for r in json.loads((tmp_path / "r" / "results.json").read_text())["runs"]}
    assert [p for p in runs["001"]["leaked"] if f"sleep {tag}1" in p], runs["001"]
    assert [p for p in runs["002"]["leaked"] if f"sleep {tag}2" in p], runs["002"]
    assert runs["003"]["leaked"] == []
    assert not sleepers(tag)


def test_orphans_of_parallel_runs_go_to_their_run_or_are_named_at_the_end(fake_tree: FakeTree,
                                                                           tmp_path: Path) -> None:
    tag = f"37{os.getpid() % 1000:03}"
    # 001 and 002 overlap: a setsid'd daemon of either could be the other's, one in the test's session cannot
    fake_tree.add_test("001", "sleep 0.5\n" + STRIPPED.format(what=f"sleep {tag}1"), out="ok\n")
    fake_tree.add_test("002", f"env -i sleep {tag}2 </dev/null >/dev/null 2>&1 &\nsleep 2\necho ok\n", out="ok\n")
    proc = run_cli(tree_args(fake_tree, tmp_path / "r", "--no-isolation", "-j", "2", "--fixed-jobs"))
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    runs = {r["test"]: r for r in data["runs"]}
    assert [p for p in runs["002"]["leaked"] if f"sleep {tag}2" in p], runs["002"]  # by its session
    assert runs["001"]["leaked"] == []
    assert [o for o in data["orphans"] if f"sleep {tag}1" in o and "qcow2-file 001 or qcow2-file 002" in o], data
    assert f"sleep {tag}1" in proc.stdout
    assert not sleepers(tag)


def test_an_adopted_daemon_that_exits_is_reaped_as_init_would(fake_tree: FakeTree, tmp_path: Path) -> None:
    """A test that kills its daemon and waits for it to go (kill -0) must not wait on a zombie of the runner."""
    body = ('(setsid env -i sleep 3600 </dev/null >/dev/null 2>&1 & echo $! > "$TEST_DIR/pid")\n'  # an orphan
            'pid=$(cat "$TEST_DIR/pid")\nsleep 0.3\nkill $pid\n'
            "for i in $(seq 50); do kill -0 $pid 2>/dev/null || { echo gone; exit 0; }; sleep 0.1; done\n"
            "echo still there\n")
    fake_tree.add_test("001", body, out="gone\n")
    proc = run_cli(tree_args(fake_tree, tmp_path / "r", "--no-isolation"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
