"""End to end: each injected crash bug (tools/bugs.d, kind "crash") run on its bug tree; the run is a crash and
the explanation's first line names the cause (bug.json's "expect")."""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
from pathlib import Path

import pytest

from support import REPO, run_cli

pytestmark = pytest.mark.e2e

sys.path.insert(0, str(REPO / "tools"))
from iotests_tools import bugtrees  # noqa: E402

CRASHES = [b for b in bugtrees.bugs() if b.kind == "crash"]


def _run(results: Path, bug: bugtrees.Bug) -> dict[str, object]:
    runs = json.loads((results / "results.json").read_text())["runs"]
    return next(r for r in runs if r["test"] == bug.test)


@pytest.mark.parametrize("bug", CRASHES, ids=[f"{b.name}-{b.version}" for b in CRASHES])
def test_the_explanation_names_the_cause(bug: bugtrees.Bug, tmp_path: Path) -> None:
    if os.environ.get("IOTESTS_RUN_SKIP_E2E"):
        pytest.skip("IOTESTS_RUN_SKIP_E2E is set")
    got = bugtrees.run_bug(bug, tmp_path / bug.name)
    assert got.outcome == "crash", f"{bug.name}: {got.outcome}: {got.reason}"
    assert got.named, f"{bug.name}: explanation {got.explanation!r} does not match {bug.expect!r}"
    run = _run(got.results, bug)
    assert str(run["reason"]).startswith(got.first_line)  # the first line leads the reason everywhere
    cores = sorted((got.results / str(run["artifacts"]) / "cores").glob("core-1-*-backtrace.txt"))
    # read with the program the runner launched: 7.2 starts QEMU as <build>/tests/qemu-iotests/../../qemu-system-...,
    # a command line the kernel cut at 80 bytes; the files are named after the whole program's name
    assert cores and not cores[0].name.startswith("core-1-qemu-system-x86-"), cores
    block = cores[0].with_name(cores[0].name.replace("-backtrace.txt", "-block.txt")).read_text()
    assert "Crash:" in block and "Nodes (" in block
    if bug.name == "uaf-job-nodes":  # 7.2: the crashing frame's loop iterator holds a link read from the freed node
        assert re.search(r"pointers: .*\bc=0x([0-9a-f]{2})\1{7} was read from freed memory \(its value is the "
                         r"0x[0-9a-f]{2} fill of MALLOC_PERTURB_=\d+\)", got.explanation), got.explanation
    if bug.name == "stream-null-then-wait":  # the test waits 60 s for each event: called a crash 5 s after the death
        assert "the test then waited 5 s with no CPU and no output" in str(run["reason"])
        assert float(str(run["duration_s"])) < 60
        # the job's coroutine was running at the crash: unwound from the thread's registers, never its stale jmp_buf
        document = json.loads(cores[0].with_name(cores[0].name.replace("-backtrace.txt", "-block.json")).read_text())
        job = document["jobs"][0]["coroutine"]
        assert job["backtrace"][0].get("running_on_thread") == document["crash"]["thread"]
        assert "stream_run" in [f.get("function") for f in job["backtrace"]]
        # what that thread left to enter it is unwound from its saved registers, not shown as the crash's frames
        callers = next(t for t in document["threads"] if t["num"] == document["crash"]["thread"])["callers"]
        assert all(c["backtrace"][0].get("function") == "qemu_coroutine_switch" for c in callers if c["backtrace"])
    # the same explanation from `iotests-run block-state --core` on the kept core, outside any run
    core = cores[0].with_name("core-1.gz")
    (tmp_path / "core").write_bytes(gzip.decompress(core.read_bytes()))
    alone = run_cli(["block-state", "--core", str(tmp_path / "core")])
    assert alone.returncode == 0, alone.stderr
    assert f"why: {got.first_line.split('0x')[0]}" in alone.stdout
    if bug.name == "uaf-job-nodes":
        assert "block_job_remove_all_bdrv" in got.explanation.splitlines()[1]
