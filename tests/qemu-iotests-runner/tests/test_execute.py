from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from iotests_run import execute
from iotests_run.model import Outcome, Result, Run, TestCase

pytestmark = pytest.mark.unit


def test_a_run_whose_execution_raises_still_gets_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [Run(TestCase(k, Path("/x") / k, frozenset()), "qcow2", "file") for k in ("001", "002")]

    def explode(run: Run, index: int, ctx: Any) -> Result:
        if run.test.key == "002":
            raise OSError("cannot rename runs/qcow2-file/002")
        return Result(run, Outcome.PASS)

    monkeypatch.setattr(execute, "execute_run", explode)
    seen: list[Result] = []
    results = execute.execute_all(runs, cast(execute.Context, object()), 2, seen.append)
    assert {r.run.test.key: r.outcome for r in results} == {"001": Outcome.PASS, "002": Outcome.FAIL}
    failed = next(r for r in results if r.run.test.key == "002")
    assert "runner error" in failed.reason and "cannot rename" in failed.reason
    assert seen == results
