"""The records that flow through the pipeline: tests, runs, results."""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
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
    ERROR = "error"  # the runner or the machine failed the run (a full results disk, a runner bug), not the test

    # Every grouping of outcomes lives here; nothing else keeps a set of them.
    @property
    def is_failure(self) -> bool:
        """Makes the job red (unless quarantined), and is tried again with --retry."""
        return self in (Outcome.FAIL, Outcome.TIMEOUT, Outcome.HANG, Outcome.CRASH, Outcome.ERROR)

    @property
    def is_notable(self) -> bool:
        """Wants a reader's eye: its own progress line and report.html entry; run again by --last-failed."""
        return self.is_failure or self in (Outcome.FLAKY, Outcome.INTERRUPTED)

    @property
    def is_bad(self) -> bool:
        """Listed under "Failures" in the summary: a failure, or a run the runner cut short."""
        return self.is_failure or self is Outcome.INTERRUPTED

    @property
    def ran_to_its_end(self) -> bool:
        """The test ended by itself, so its duration is worth remembering for scheduling (and its outcome is the
        test's own: an ERROR is the machine's, never remembered as the test failing)."""
        return self in (Outcome.PASS, Outcome.FAIL, Outcome.NOT_RUN, Outcome.FLAKY)

    @property
    def counters_whole(self) -> bool:
        """Every process of the run exited by itself, so all its gcov counters were written (a coverage map
        records it)."""
        return self in (Outcome.PASS, Outcome.FAIL, Outcome.NOT_RUN)

    @property
    def letter(self) -> str | None:
        """Its letter in a run's remembered outcomes (the duration history); None: never remembered (the runner
        cut it short, or the machine failed it)."""
        return _LETTERS[self]

    @property
    def failed_here(self) -> bool:
        """Counts as a failure in a run's remembered outcomes (flaky too: it failed before it passed)."""
        return (self.is_failure and self.letter is not None) or self is Outcome.FLAKY

    @classmethod
    def from_letter(cls, letter: str) -> Outcome:
        return _BY_LETTER[letter]

    @property
    def tally(self) -> str:
        """The closing line's bucket: passed (flaky too), failed, or skipped (not run, interrupted)."""
        if self.is_failure:
            return "failed"
        return "passed" if self in (Outcome.PASS, Outcome.FLAKY) else "skipped"


# Every outcome has an entry (a test checks it): an outcome missing here would be silently dropped from the history.
_LETTERS: dict[Outcome, str | None] = {
    Outcome.PASS: "p", Outcome.FAIL: "f", Outcome.TIMEOUT: "t", Outcome.HANG: "h", Outcome.CRASH: "c",
    Outcome.FLAKY: "y", Outcome.NOT_RUN: None, Outcome.INTERRUPTED: None, Outcome.ERROR: None,
}
_BY_LETTER = {letter: outcome for outcome, letter in _LETTERS.items() if letter is not None}


class Stop(enum.Enum):
    """Why the runner stopped a run before its test ended by itself (kept apart from the run's Outcome)."""

    TIMEOUT = "timeout"
    HANG = "hang"
    INTERRUPTED = "interrupted"
    CRASH = "crash"  # a process of the run died of a crash signal, and the test then waited


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class RunId:
    """A run's identity, the one spelling of it: the test's key, format, protocol (and --repeat copy). The history
    remembers runs by `history_key` (copies share it), the results folder by `results.folder.run_folder`, results.json
    by these fields, --last-failed and merge by the record itself."""

    key: str
    format: str
    protocol: str
    copy: int = 0

    @property
    def combo(self) -> str:
        return f"{self.format}-{self.protocol}"

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def history_key(self) -> str:
        return f"{self.combo}/{self.key}"

    @property
    def label(self) -> str:
        return f"{self.combo} {self.name}" + (f" #{self.copy}" if self.copy else "")

    @property
    def base(self) -> RunId:
        return RunId(self.key, self.format, self.protocol)


@dataclass(frozen=True, slots=True)
class Run:
    """One test under one format and one protocol (with --repeat, one copy of it: copy 1..N)."""

    test: TestCase
    format: str
    protocol: str
    copy: int = 0

    @property
    def id(self) -> RunId:
        return RunId(self.test.key, self.format, self.protocol, self.copy)

    @property
    def combo(self) -> str:
        return self.id.combo

    @property
    def label(self) -> str:
        return self.id.label

    @property
    def base(self) -> Run:
        """The run this is a copy of (itself when it is none)."""
        return Run(self.test, self.format, self.protocol) if self.copy else self


@dataclass
class LiveRun:
    """A run in flight, as progress shows it (its supervisor updates last_activity)."""

    label: str
    started: float
    last_activity: float
    stop: threading.Event = field(default_factory=threading.Event)  # this run alone is to stop (--until-fail)


@dataclass(frozen=True, slots=True)
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
    casenotrun: str = ""  # the cases a test skipped inside itself (its TEST.casenotrun file), as check shows them
    recent: str = ""  # a failure: how often its run failed here recently ("failed 3 of the last 40 runs ...")
    started_s: float | None = None  # when its test started, seconds after the invocation began (the timeline)
    shard: int = 0  # in a merged folder, which of merge's inputs (1, 2, ...) ran it; 0 elsewhere
    explanation: str = ""  # a hang's or crash's cause read from its dump (1-3 lines); its first line leads reason


def fails_the_job(results: Iterable[Result], strict_flaky: bool) -> bool:
    """The one rule, for a run and for a merge of shards: a failure not quarantined, or flaky under --strict-flaky."""
    return any((r.outcome.is_failure and not r.quarantined) or (strict_flaky and r.outcome is Outcome.FLAKY)
               for r in results)
