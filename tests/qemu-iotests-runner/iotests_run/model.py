"""The records that flow through the pipeline: tests, runs, results."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class Outcome(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    NOT_RUN = "not-run"
    TIMEOUT = "timeout"
    HANG = "hang"
    CRASH = "crash"
    FLAKY = "flaky"
    INTERRUPTED = "interrupted"

    @property
    def is_failure(self) -> bool:
        """Whether this outcome makes the job red."""
        return self in FAILING


FAILING = frozenset({Outcome.FAIL, Outcome.TIMEOUT, Outcome.HANG, Outcome.CRASH})


@dataclass(frozen=True)
class TestCase:
    """One iotest file: `040` or `tests/backing-file-invalidation`."""

    __test__ = False  # not a pytest class

    key: str  # path relative to the iotests folder, as check names it
    path: Path
    groups: frozenset[str]
    python: bool = False  # started with the interpreter (first line is the python3 shebang)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Run:
    """One test under one format and one protocol."""

    test: TestCase
    format: str
    protocol: str

    @property
    def combo(self) -> str:
        return f"{self.format}-{self.protocol}"

    @property
    def label(self) -> str:
        return f"{self.combo} {self.test.name}"


@dataclass(frozen=True)
class Result:
    run: Run
    outcome: Outcome
    reason: str = ""
    duration_s: float = 0.0
    diff: str = ""
    artifacts: str | None = None  # folder relative to the results folder
    output_tail: str = ""
    diagnostics: str = ""  # summary of what was collected before a hung or timed-out run was killed
    attachments: tuple[str, ...] = ()  # files relative to the results folder (diagnostics, diff, output)
    leaked: tuple[str, ...] = ()  # processes the run left behind ("PID command"), killed by the runner
    cpu_s: float | None = None  # CPU time of the run's processes, when a cgroup counted it
    quarantined: bool = False  # a failure --quarantine excuses: reported, but the job does not fail for it


def fails_the_job(results: Iterable[Result], strict_flaky: bool) -> bool:
    """The one rule, for a run and for a merge of shards: a failure not quarantined, or flaky under --strict-flaky."""
    return any((r.outcome.is_failure and not r.quarantined) or (strict_flaky and r.outcome is Outcome.FLAKY)
               for r in results)
