from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.run import execute
from iotests_run.run.admission import Admission
from iotests_run.run.registry import Registry

pytestmark = pytest.mark.unit


def test_a_run_whose_execution_raises_still_gets_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [Run(TestCase(k, Path("/x") / k, frozenset()), "qcow2", "file") for k in ("001", "002")]

    def explode(run: Run, index: int, ctx: Any) -> Result:
        if run.test.key == "002":
            raise OSError("cannot rename runs/qcow2-file/002")
        return Result(run, Outcome.PASS)

    monkeypatch.setattr(execute, "execute_run", explode)
    seen: list[Result] = []
    ctx = cast(execute.Context, SimpleNamespace(registry=Registry(), repeat=None))
    results = execute.execute_all(runs, ctx, Admission(2, 2, None), seen.append)
    assert {r.run.test.key: r.outcome for r in results} == {"001": Outcome.PASS, "002": Outcome.ERROR}
    failed = next(r for r in results if r.run.test.key == "002")
    assert "runner error" in failed.reason and "cannot rename" in failed.reason
    assert seen == results


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


def test_job_count_from_the_environment_and_make() -> None:
    from iotests_run.cli.options import default_jobs, extra_arguments
    from iotests_run.errors import UsageError

    assert default_jobs({"IOTESTS_RUN_JOBS": "3", "MAKEFLAGS": "rR -j8"}, 2) == 3
    assert default_jobs({"MAKEFLAGS": "rR -j8 --jobserver-auth=fifo:/tmp/x"}, 2) == 8  # make -j8 check-block
    assert default_jobs({"MAKEFLAGS": " -j 6"}, 2) == 6
    assert default_jobs({}, 2) == 8  # 4 x the usable cores
    assert default_jobs({"MAKEFLAGS": "rR -j --jobserver-auth=3,4"}, 2) == 8  # make -j: no number, our default
    assert default_jobs({"MAKEFLAGS": "rR", "IOTESTS_RUN_JOBS": ""}, 3) == 12  # empty: not set
    for bad in ("0", "-3", "abc", "2x"):
        with pytest.raises(UsageError, match=f"IOTESTS_RUN_JOBS: {bad}"):
            default_jobs({"IOTESTS_RUN_JOBS": bad}, 2)
    assert extra_arguments({"IOTESTS_RUN_ARGS": "--retry 1 --quarantine 'a b.txt'"}) == [
        "--retry", "1", "--quarantine", "a b.txt"]
    with pytest.raises(UsageError, match="IOTESTS_RUN_ARGS"):
        extra_arguments({"IOTESTS_RUN_ARGS": "--quarantine 'open"})


def test_the_command_line_wins_over_iotests_run_args() -> None:
    from iotests_run.cli.options import make_parser, parse_arguments
    from iotests_run.errors import UsageError
    from iotests_run.report.progress import NORMAL, QUIET, VERBOSE
    from iotests_run.run.admission import Cpus

    def parse(argv: list[str], extra: str) -> Any:
        return parse_arguments(make_parser(Cpus(2, None)), argv, {"IOTESTS_RUN_ARGS": extra})

    args = parse(["-f", "qcow2", "-v", "001"], "-f raw --retry 2 -q 002")
    assert (args.format, args.retry, args.level, args.tests) == (["qcow2"], 2, VERBOSE, ["001"])
    args = parse([], "-f raw -q 002")
    assert (args.format, args.level, args.tests) == (["raw"], QUIET, ["002"])
    assert parse([], "").level == NORMAL
    with pytest.raises(UsageError, match="IOTESTS_RUN_ARGS: argument -j/--jobs: not a number: x"):
        parse([], "-j x")


@pytest.mark.process
def test_mounts_left_under_a_sandbox_are_released(tmp_path: Path) -> None:
    """The no-namespace fallback: what a run left mounted (a FUSE export, here a tmpfs) is lazily unmounted."""
    import os
    import shutil
    import subprocess
    import sys

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


def test_the_pool_waits_without_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    runs = [Run(TestCase("001", Path("/x/001"), frozenset()), "qcow2", "file")]

    def slow(run: Run, index: int, ctx: Any) -> Result:
        time.sleep(3)
        return Result(run, Outcome.PASS)

    monkeypatch.setattr(execute, "execute_run", slow)
    ctx = cast(execute.Context, SimpleNamespace(registry=Registry(), repeat=None))
    cpu = time.process_time()
    execute.execute_all(runs, ctx, Admission(2, 2, None), lambda r: None)  # no on_tick
    assert time.process_time() - cpu < 0.5  # a busy-waiting loop would burn about 2 s
