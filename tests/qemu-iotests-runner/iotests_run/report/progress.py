"""Live progress on the terminal.

Not on a TTY (CI logs): one line per finished run, and `still running: ...`
after a stretch of silence. On a TTY: a status line redrawn in place (done/total,
counts so far, runs in flight with their elapsed time, an ETA from the duration
history), with a permanent line only for runs that did not pass.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from iotests_run.model import LiveRun, Outcome, Result
from iotests_run.report.outcomes import PRESENTATION
from iotests_run.results.folder import DIFF
from iotests_run.text import terminal_safe

QUIET, NORMAL, VERBOSE = -1, 0, 1
QUIET_NOTICE_S = 30.0  # default of --still-running-every
VERBOSE_DIFF_LINES = 40
CLEAR_LINE = "\r\x1b[K"
# Observed/predicted duration ratio used for the ETA is kept within these bounds.
SPEED_BOUNDS = (0.25, 4.0)


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Eta:
    """Remaining wall time: predicted work left, corrected by how fast runs went so far, over the jobs."""

    estimates: Mapping[str, float]  # run label -> predicted seconds, for the runs that will be started
    jobs: int
    predicted_done: float = 0.0
    observed_done: float = 0.0
    left: float = -1.0

    def __post_init__(self) -> None:
        self.left = sum(self.estimates.values())

    def finished(self, result: Result) -> None:
        predicted = self.estimates.get(result.run.label)
        if predicted is None or result.outcome is Outcome.INTERRUPTED:
            return
        self.left -= predicted
        self.predicted_done += predicted
        self.observed_done += result.duration_s

    def seconds(self, live: Sequence[LiveRun], now: float) -> float:
        speed = self.observed_done / self.predicted_done if self.predicted_done > 0 else 1.0
        speed = min(max(speed, SPEED_BOUNDS[0]), SPEED_BOUNDS[1])
        in_flight = sum(self.estimates.get(r.label, 0.0) for r in live)
        waiting = max(self.left - in_flight, 0.0) * speed
        flight_left = sum(max(self.estimates.get(r.label, 0.0) * speed - (now - r.started), 0.0) for r in live)
        return (waiting + flight_left) / max(self.jobs, 1)


class Progress:
    def __init__(self, total: int, stream: TextIO = sys.stdout, *, level: int = NORMAL,
                 live: bool | None = None, eta: Eta | None = None, quiet_notice_s: float = QUIET_NOTICE_S,
                 repeat: int = 0) -> None:
        self.total = total
        self.quiet_notice_s = quiet_notice_s  # not on a TTY: name the runs still going after this much silence
        self.done = 0
        self.stream = stream
        self.level = level
        self.live = (stream.isatty() if live is None else live) and level > QUIET
        self.eta = eta
        self.counts: Counter[str] = Counter()
        self.width = len(str(total))
        self.last_line = time.monotonic()
        self._status = ""
        self._flight: list[LiveRun] = []
        self.repeat = repeat  # --repeat N: copies are counted per run, a line when a run's copies are done
        self._copies: dict[str, list[int]] = {}  # base label -> [finished, failed]

    # lines that stay
    def note(self, text: str, *, quiet_too: bool = False) -> None:
        """A line that stays; control characters from tests (escape sequences) are shown, not obeyed."""
        if self.level == QUIET and not quiet_too:
            return
        text = terminal_safe(text)
        prefix = CLEAR_LINE if self._status else ""
        print(prefix + text, file=self.stream, flush=not self._status)
        if self._status:
            self._draw(self._status_text(self._flight, time.monotonic()))
        self.last_line = time.monotonic()

    def finished(self, result: Result) -> None:
        self.done += 1
        self.counts[result.outcome.tally] += 1
        self._flight = [r for r in self._flight if r.label != result.run.label]
        if self.eta is not None:
            self.eta.finished(result)
        if result.run.copy:
            self._copy_finished(result)
            return
        if result.outcome.is_notable or self.level == VERBOSE or (self.level == NORMAL and not self.live):
            word = PRESENTATION[result.outcome].word
            line = (f"[{self.done:>{self.width}}/{self.total}] {word:<11} {result.run.combo:<12} "
                    f"{result.run.test.name:<28} {result.duration_s:6.1f} s")
            if result.outcome is not Outcome.PASS and result.reason:
                line += f"  {result.reason.splitlines()[0][:120]}"
            if self.level == VERBOSE and result.outcome.is_failure:
                line += _details(result)
            self.note(line, quiet_too=result.outcome.is_failure)

    def _copy_finished(self, result: Result) -> None:
        """A copy (--repeat): failures get their line; a run gets one count line when its copies are done."""
        counts = self._copies.setdefault(result.run.base.label, [0, 0])
        counts[0] += 1
        counts[1] += result.outcome.is_failure
        if result.outcome.is_notable:
            word = PRESENTATION[result.outcome].word
            self.note(f"[{self.done:>{self.width}}/{self.total}] {word:<11} {result.run.label:<32} "
                      f"{result.duration_s:6.1f} s  {result.reason.splitlines()[0][:120] if result.reason else ''}",
                      quiet_too=result.outcome.is_failure)
        if counts[0] == self.repeat and self.level > QUIET:
            done, failed = counts
            self.note(f"{result.run.base.label}: {done} runs, {failed} failed ({100 * failed / done:.1f}%)")

    # the line redrawn in place
    def tick(self, live: Sequence[LiveRun]) -> None:
        now = time.monotonic()
        self._flight = list(live)
        if self.live:
            self._draw(self._status_text(live, now))
        elif live and self.level > QUIET and now - self.last_line >= self.quiet_notice_s:
            names = ", ".join(f"{r.label} ({now - r.started:.0f} s)" for r in sorted(live, key=lambda r: r.started))
            self.note(f"still running: {names}")

    def close(self) -> None:
        """Take the status line away before the summary is printed."""
        if self._status:
            print(CLEAR_LINE, end="", file=self.stream, flush=True)
            self._status = ""

    def _status_text(self, live: Sequence[LiveRun], now: float) -> str:
        counts = ", ".join(f"{n} {word}" for word, n in self.counts.items() if n)
        flight = sorted(live, key=lambda r: r.started)
        running = " ".join(f"{r.label.split(' ', 1)[-1]}:{now - r.started:.0f}s" for r in flight[:6])
        if len(flight) > 6:
            running += f" +{len(flight) - 6}"
        text = f"[{self.done}/{self.total}] {counts or 'starting'}"
        if self.eta is not None and flight:
            text += f" | ETA {_clock(self.eta.seconds(flight, now))}"
        if running:
            text += f" | running {running}"
        columns = shutil.get_terminal_size((100, 24)).columns
        return text[: max(columns - 1, 20)]

    def _draw(self, text: str) -> None:
        self._status = text
        print(CLEAR_LINE + text, end="", file=self.stream, flush=True)


def _details(result: Result) -> str:
    """--verbose: the start of the diff and the diagnostics summary, under the failure's line."""
    lines = result.diff.splitlines()
    shown = lines[:VERBOSE_DIFF_LINES]
    if len(lines) > len(shown):
        shown.append(f"... {len(lines) - len(shown)} more lines in {result.artifacts}/{DIFF}")
    if result.diagnostics:
        shown += result.diagnostics.splitlines()
    return "".join(f"\n    {line}" for line in shown)
