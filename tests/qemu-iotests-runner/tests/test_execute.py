"""run/execute.py: the pool, a run that raises, and the files of a test read after it ends."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.run import execute
from iotests_run.run.admission import Admission
from iotests_run.run.registry import Registry
from support import FakeTree, run_cli, tree_args


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.process
def test_a_fifo_where_the_runner_reads_a_tests_file_does_not_block_it(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", 'mkfifo "$TEST_DIR/001.casenotrun"\necho ok\n', out="ok\n")
    fake_tree.add_test("002", 'mkfifo "$TEST_DIR/002.notrun"\necho ok\n', out="ok\n")
    proc = run_cli(tree_args(fake_tree, tmp_path / "r"), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
