"""tools/qemu-integrate: iotests-run inside a QEMU tree, run by QEMU's own `make check-block`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from support import ReferenceTree

TOOL = Path(__file__).resolve().parents[3] / "tools" / "qemu-integrate"
TESTS_MESON = "subdir('bench')\nsubdir('qemu-iotests')\n\ntest_qapi_outputs = []\n"


def integrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)


def snapshot(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture
def qemu_like(tmp_path: Path) -> tuple[Path, Path]:
    """A QEMU-shaped source tree and a build folder whose Python already has our dependencies."""
    src, build = tmp_path / "qemu", tmp_path / "qemu" / "build"
    (src / "tests" / "qemu-iotests").mkdir(parents=True)
    (src / "tests" / "qemu-iotests" / "check").write_text("#!/usr/bin/env python3\n")
    (src / "tests" / "meson.build").write_text(TESTS_MESON)
    build.mkdir()
    (build / "config-host.mak").write_text(f"HOST_CC=cc\nPYTHON={sys.executable} -B\n")
    return src, build


@pytest.mark.process
def test_integrate_is_idempotent_and_remove_restores_the_tree(qemu_like: tuple[Path, Path]) -> None:
    src, build = qemu_like
    before = snapshot(src)
    first = integrate(str(src), "--build", str(build))
    assert first.returncode == 0, first.stderr
    meson = (src / "tests" / "meson.build").read_text()
    assert "subdir('qemu-iotests-runner')" in meson and "\nsubdir('qemu-iotests')\n" not in meson
    runner = src / "tests" / "qemu-iotests-runner"
    assert (runner / "iotests_run" / "cli" / "main.py").is_file() and (runner / "meson.build").is_file()
    assert "installing" not in first.stdout  # the build's Python has the packages already
    after_first = snapshot(src)
    again = integrate(str(src), "--build", str(build))
    assert again.returncode == 0 and snapshot(src) == after_first
    removed = integrate(str(src), "--remove")
    assert removed.returncode == 0, removed.stderr
    assert snapshot(src) == before and not runner.exists()
    assert "nothing to remove" in integrate(str(src), "--remove").stdout


@pytest.mark.process
def test_integrate_refuses_what_it_must_not_touch(qemu_like: tuple[Path, Path], tmp_path: Path) -> None:
    src, build = qemu_like
    for args, words in [((str(tmp_path / "nowhere"),), ("not a QEMU source tree", "nowhere")),
                        ((str(src), "--build", str(tmp_path)), ("not a configured QEMU build folder",)),
                        ((str(src), "--frob"), ("--frob",))]:
        proc = integrate(*args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert all(w in proc.stderr for w in words), proc.stderr
    theirs = src / "tests" / "qemu-iotests-runner"
    theirs.mkdir()
    (theirs / "mine.txt").write_text("someone else's\n")
    for args in [(str(src), "--build", str(build)), (str(src), "--remove")]:
        proc = integrate(*args)
        assert proc.returncode == 2 and "not made by qemu-integrate" in proc.stderr
    assert (theirs / "mine.txt").read_text() == "someone else's\n"
    assert (src / "tests" / "meson.build").read_text() == TESTS_MESON


@pytest.mark.e2e
def test_qemus_own_make_check_block_runs_iotests_run(any_reference_tree: ReferenceTree, tmp_path: Path) -> None:
    src, build = any_reference_tree.source, any_reference_tree.build
    original = (src / "tests" / "meson.build").read_bytes()
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    # a small, fixed slice of the block suite: shard 1 of 40, planned from an empty history
    env["IOTESTS_RUN_ARGS"] = f"--shard 1/40 --history {tmp_path / 'durations.json'}"
    try:
        proc = integrate(str(src), "--build", str(build))
        assert proc.returncode == 0, proc.stderr
        make = subprocess.run(["make", "-C", str(build), "-j2", "check-block"], capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL, timeout=1200)
        assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
        assert "iotests-qcow2" in make.stdout
        ours = build / "tests" / "qemu-iotests-runner"
        cases = list(ET.parse(ours / "iotests-qcow2.junit.xml").getroot().iter("testcase"))
        # a small part of the suite ran (1/40 of it: one long test can fill a shard planned from real durations)
        assert 1 <= len(cases) <= 10 and {c.get("classname") for c in cases} == {"iotests.qcow2-file"}
        data = json.loads((ours / "results-qcow2" / "results.json").read_text())
        assert data["jobs"] == 2  # make's -j2
        assert data["qemu"]["build"] == str(build.resolve())
        meson_junit = (build / "meson-logs" / "testlog.junit.xml").read_text()
        assert "iotests-qcow2" in meson_junit
    finally:
        proc = integrate(str(src), "--remove")
    assert proc.returncode == 0, proc.stderr
    assert (src / "tests" / "meson.build").read_bytes() == original
    assert not (src / "tests" / "qemu-iotests-runner").exists()
