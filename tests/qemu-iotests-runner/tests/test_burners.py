"""run/burners.py: --load's CPU burners beside the runs, gone afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from support import FakeTree, run_cli

pytestmark = pytest.mark.process


def burners() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if "iotests-run --load" in " ".join(p.info["cmdline"] or [])]


def test_load_burns_beside_the_runs_and_is_gone_afterwards_even_after_sigkill(fake_tree: FakeTree,
                                                                              tmp_path: Path) -> None:
    fake_tree.add_test("001", f"pgrep -f 'iotests-run --load' | wc -l > {tmp_path}/seen\necho ok\n", out="ok\n")
    results = tmp_path / "results"
    proc = run_cli(["001", "--load", "2", *fake_tree.args(results)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int((tmp_path / "seen").read_text()) == 2
    assert "2 CPU-burning process(es) beside the runs (--load)" in proc.stdout
    assert json.loads((results / "results.json").read_text())["load"] == 2
    assert burners() == []
    fake_tree.add_test("002", f"touch {tmp_path}/go\nsleep 3600\n", out="")
    runner = subprocess.Popen([sys.executable, "-m", "iotests_run", "002", "--load", "2", "--no-isolation",
                               *fake_tree.args(tmp_path / "killed")], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (tmp_path / "go").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(burners()) == 2
    runner.kill()
    runner.wait()
    deadline = time.monotonic() + 10
    while burners():
        assert time.monotonic() < deadline, "--load processes survived the runner's SIGKILL"
        time.sleep(0.1)
