"""--repeat: copies of each run side by side, and what their outcomes say.

Every selected run is executed N times, each copy in its own sandbox (Run.copy 1..N), under
the normal admission. The copies' results are kept one by one (results.json: one record per
copy); for people they are folded into one result per run (JUnit, summary, report.html) with
the count, the failures by outcome, the failure rate and its 95% Wilson interval.

`Policy` is shared by the pool's workers: it keeps the first K failing copies' artifacts only,
and with --until-fail it tells the pool to start no more copies of a run that failed and to stop
and drop those in flight.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from iotests_run.model import Outcome, Result, Run

Z95 = 1.959964
REPORT, REPORT_AND_STOP, DROP = "report", "report and stop the other copies", "drop"


def wilson(failures: int, attempts: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a failure rate (for 0 of N its upper bound is still above 0)."""
    if attempts == 0:
        return 0.0, 1.0
    p = failures / attempts
    denominator = 1 + z * z / attempts
    centre = (p + z * z / (2 * attempts)) / denominator
    half = z * math.sqrt(p * (1 - p) / attempts + z * z / (4 * attempts * attempts)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Tally:
    """What the copies of one run came to."""

    run: Run  # the base run (copy 0)
    attempts: int
    failures: dict[str, int]  # outcome value -> copies that ended so
    mean_s: float
    first_failure: Result | None

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.failed, self.attempts)

    def describe(self) -> str:
        """`40 attempts, 3 failed (7.5%, 95% interval 2.6-19.9%)`."""
        lo, hi = self.interval
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.failures.items()))
        rate = 100 * self.failed / self.attempts if self.attempts else 0.0
        return (f"{self.attempts} attempts, {self.failed} failed ({rate:.1f}%, 95% interval "
                f"{100 * lo:.1f}-{100 * hi:.1f}%)" + (f": {kinds}" if kinds else ""))

    def record(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {"test": self.run.test.name, "key": self.run.test.key, "format": self.run.format,
                "protocol": self.run.protocol, "attempts": self.attempts, "failed": self.failed,
                "failures": self.failures, "rate": round(self.failed / self.attempts, 4) if self.attempts else 0.0,
                "interval_95": [round(lo, 4), round(hi, 4)], "mean_s": round(self.mean_s, 3),
                "first_failure_copy": self.first_failure.run.copy if self.first_failure else None}


def tallies(results: Sequence[Result]) -> list[Tally]:
    """One tally per run that has copies, in plan order of first appearance."""
    by_run: dict[Run, list[Result]] = {}
    for r in results:
        if r.run.copy:
            by_run.setdefault(r.run.base, []).append(r)
    out = []
    for run, copies in by_run.items():
        copies.sort(key=lambda r: r.run.copy)
        failing = [r for r in copies if r.outcome.is_failure]
        ran = [r.duration_s for r in copies if r.duration_s > 0]
        out.append(Tally(run, len(copies), dict(Counter(r.outcome.value for r in failing)),
                         sum(ran) / len(ran) if ran else 0.0, failing[0] if failing else None))
    return out


def fold(results: Sequence[Result]) -> list[Result]:
    """One result per run, for JUnit, the summary and report.html: the first failing copy (its artifacts,
    its diff) with the count in its reason, or a pass that says how many copies passed."""
    folded = [r for r in results if not r.run.copy]
    for tally in tallies(results):
        if tally.first_failure is not None:
            first = tally.first_failure
            folded.append(replace(first, run=tally.run, duration_s=round(tally.mean_s, 3),
                                  reason=f"{tally.describe()}; first failure (copy {first.run.copy}): {first.reason}"))
        else:
            folded.append(Result(tally.run, Outcome.PASS, tally.describe(), round(tally.mean_s, 3)))
    return folded


@dataclass
class Policy:
    """Shared by the pool's workers while copies run."""

    keep_failures: int = 5
    until_fail: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _kept: Counter[Run] = field(default_factory=Counter)
    _failed: set[Run] = field(default_factory=set)

    def keeps_artifacts(self, result: Result) -> bool:
        """Whether this failing copy is one of the first keep_failures of its run."""
        with self._lock:
            self._kept[result.run.base] += 1
            return self._kept[result.run.base] <= self.keep_failures

    def settle(self, result: Result) -> str:
        """What to do with a finished copy: REPORT it, REPORT_AND_STOP its run's other copies (the first
        failure under --until-fail), or DROP it (a copy that ended after its run had failed, --until-fail)."""
        with self._lock:
            if self.until_fail and result.run.base in self._failed:
                return DROP
            if result.outcome.is_failure:
                self._failed.add(result.run.base)
                return REPORT_AND_STOP if self.until_fail else REPORT
        return REPORT

    def dropped(self, run: Run) -> bool:
        """--until-fail: a copy of a run that has already failed is not started, or not reported."""
        with self._lock:
            return self.until_fail and run.base in self._failed
