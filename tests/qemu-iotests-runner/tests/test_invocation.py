"""run/invocation.py: each run's limits (timeout, hang timeout from its last passing run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotests_run.model import Outcome, Result, Run
from iotests_run.plan.planner import matrix
from support import case

pytestmark = pytest.mark.unit


def test_a_run_that_passed_last_time_is_a_hang_after_a_few_times_its_duration(tmp_path: Path) -> None:
    from iotests_run.plan import history
    from iotests_run.run.invocation import LimitOptions, limits_for

    path = tmp_path / "durations.json"
    quick, slow, broke, new = (matrix([case(n)], ["qcow2"], ["file"])[0] for n in ("001", "002", "003", "004"))
    history.save(path, "t", [Result(quick, Outcome.PASS, duration_s=0.7), Result(slow, Outcome.PASS, duration_s=6.0),
                             Result(broke, Outcome.PASS, duration_s=0.5)])
    history.save(path, "t", [Result(broke, Outcome.FAIL, duration_s=0.2)])
    passed = history.last_passed(path, "t")
    assert passed == {"qcow2-file/001": 0.7, "qcow2-file/002": 6.0}  # 003 failed last time

    def hang(run: Run, factor: float = 5, hang_timeout: float = 120, multiplier: float = 1) -> tuple[float, str]:
        limits = limits_for(LimitOptions(600, multiplier, hang_timeout, 3, factor, passed))(run)
        sooner = limits.sooner_hang
        return (sooner.after_s, sooner.basis) if sooner else (limits.hang_timeout_s, "--hang-timeout")

    assert hang(quick) == (10.0, "--hang-factor 5 x 0.7 s, its last passing run")  # never under the floor
    assert hang(slow) == (30.0, "--hang-factor 5 x 6 s, its last passing run")
    assert hang(slow, multiplier=2) == (60.0, "--hang-factor 5 x 6 s, its last passing run")
    assert hang(slow, hang_timeout=20) == (20, "--hang-timeout")  # at most --hang-timeout
    assert hang(broke) == hang(new) == (120, "--hang-timeout")  # no passing run to go by
    assert hang(quick, factor=0) == (120, "--hang-timeout")
