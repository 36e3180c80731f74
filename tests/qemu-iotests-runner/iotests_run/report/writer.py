"""The results folder's files, written as runs finish and at the end (the stateful writer).

Every other module in report/ is a pure function of the results; this one keeps the list of
finished runs, decides when the files are rewritten and writes them atomically. Where they
live is results_folder's business.

A write that fails (a full or read-only disk) never stops the run: each file is replaced only
when its new version is whole, so what is there stays valid (up to the last write that went
through), and the failure is said once. When the disk is full, the room the results folder
held back at its claim (`release`) is given up for one more write, so the files hold every run
that finished; the final write gets it too.
"""

from __future__ import annotations

import errno
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from iotests_run.files import write_atomically
from iotests_run.model import LiveRun, Result
from iotests_run.plan.repeats import fold, tallies
from iotests_run.report.html import html_report
from iotests_run.report.junit import junit_xml
from iotests_run.report.progress import Progress
from iotests_run.report.results_json import results_json_chunks
from iotests_run.report.summary import summary_text
from iotests_run.report.tap import tap_line
from iotests_run.results.folder import JUNIT, REPORT, RESULTS_JSON, SUMMARY
from iotests_run.results.meta import Meta

# While runs finish, results.json and junit.xml are rewritten at most this often (and at the end):
# each rewrite serialises every result so far, and after every run that cost the runner more CPU
# than everything else it does (660 runs of qcow2+raw+qed quick: about 55% of its own CPU).
WRITE_EVERY_S = 1.0


def relative_to_cwd(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)


def _unchanged(result: Result) -> Result:
    return result


@dataclass
class Reporter:
    """Streams every finished run to the terminal and rewrites the result files.

    A result reaches the files at once when the last rewrite is WRITE_EVERY_S old, else at the
    next tick (the pool ticks every second): never more than about a second late. `mark` may
    amend a result before it is recorded (--quarantine marks the failures it excuses).
    """

    results_dir: Path
    junit_copy: Path | None
    meta: Meta
    progress: Progress
    tap: bool
    results: list[Result]
    mark: Callable[[Result], Result] = _unchanged
    clock: Callable[[], float] = time.monotonic
    written_at: float = -math.inf
    unwritten: bool = False
    busy: Callable[[], float] | None = None  # busy core-seconds so far (cpu.Cpus.busy_clock), for the timeline
    epoch: float = 0.0  # when the invocation began, on `clock`
    release: Callable[[], bool] = lambda: False  # gives up the room held back for a full disk (True: there was some)
    unwritable: set[Path] = field(default_factory=set)  # files a write failed for (said once each)
    _last: tuple[float, float] | None = None

    def write_files(self, say: bool = True) -> list[tuple[Path, OSError]]:
        """results.json and junit.xml as they stand; the files that could not be written (each said once)."""
        failed = write_machine_reports(self.results_dir, self.results, self.meta, self.junit_copy)
        if any(e.errno in (errno.ENOSPC, errno.EDQUOT) for _, e in failed) and self.release():
            failed = write_machine_reports(self.results_dir, self.results, self.meta, self.junit_copy)
        self.written_at, self.unwritten = self.clock(), False
        for path, exc in failed if say else ():
            if path not in self.unwritable:
                self.progress.note(f"iotests-run: warning: cannot write {relative_to_cwd(path)} ({exc.strerror or exc})"
                                   f": it keeps what it held; the run goes on", quiet_too=True)
            self.unwritable.add(path)
        return failed

    def record(self, result: Result) -> None:
        result = self.mark(result)
        self.results.append(result)
        self.progress.finished(result)
        if self.tap:
            print(tap_line(len(self.results), result), flush=True)

    def finished(self, result: Result) -> None:
        self.record(result)
        if self.meta.first_failure is None and result.outcome.is_failure:
            self.meta.first_failure = {"after_s": round(self.clock() - self.epoch, 2), "run": result.run.label}
        self.unwritten = True
        self.flush(at_most_every=WRITE_EVERY_S)

    def flush(self, at_most_every: float = 0.0) -> None:
        """Write what is not written yet, unless the last write is younger than at_most_every."""
        if self.unwritten and self.clock() - self.written_at >= at_most_every:
            self.write_files()

    def tick(self, live: Sequence[LiveRun]) -> None:
        self.sample(len(live))
        self.flush()
        self.progress.tick(live)

    def sample(self, in_flight: int) -> None:
        """One point of the timeline (results.json `timeline`): seconds, runs in flight, busy cores since the last."""
        now = self.clock()
        busy = self.busy() if self.busy is not None else None
        cores = None
        if busy is not None and self._last is not None and now > self._last[0]:
            cores = max(0.0, round((busy - self._last[1]) / (now - self._last[0]), 2))
        if busy is not None:
            self._last = (now, busy)
        self.meta.timeline.append([round(now - self.epoch, 1), in_flight, cores])


def incomplete(folder: Path, failed: Sequence[tuple[Path, OSError]], finished: int) -> str:
    """The one line for result files that the end of a run or a merge could not write."""
    why = "; ".join(dict.fromkeys(str(e.strerror or e) for _, e in failed))
    return (f"the results in {relative_to_cwd(folder)} are incomplete ({why}): "
            f"{', '.join(relative_to_cwd(p) for p, _ in failed)} could not be written at the end and each keeps what "
            f"it held before ({finished} runs finished)")


def _write_each(files: Sequence[tuple[Path, Callable[[], str | bytes | Iterable[str]]]]) -> list[tuple[Path, OSError]]:
    """Each file made and replaced atomically, the next tried whatever became of the one before; the failures."""
    failed = []
    for path, content in files:
        try:
            write_atomically(path, content())
        except OSError as exc:
            failed.append((path, exc))
    return failed


def write_machine_reports(folder: Path, results: Sequence[Result], meta: Meta,
                          junit_copy: Path | None = None) -> list[tuple[Path, OSError]]:
    """results.json and junit.xml (and its copy where --junit asked), each replaced atomically; the files
    that could not be written, with why."""
    xml = junit_xml(fold(results), attachment_base=relative_to_cwd(folder.resolve()))  # one testcase per run
    files: list[tuple[Path, Callable[[], str | bytes | Iterable[str]]]] = [
        (folder / RESULTS_JSON, lambda: results_json_chunks(results, meta.to_dict())),  # every copy of a repeated run
        (folder / JUNIT, lambda: xml)]
    if junit_copy is not None:
        files.append((junit_copy, lambda: xml))
    return _write_each(files)


def write_people_reports(folder: Path, results: Sequence[Result], meta: Meta, title: str,
                         wall_s: float) -> tuple[str, list[tuple[Path, OSError]]]:
    """summary.txt and report.html, at the end of a run or a merge; the summary's text and the files that could
    not be written. The copies of a repeated run are folded into one result (repeats.fold), their tally beside it."""
    first = meta.first_failure
    heads = [*([f"Selection: {meta.affected}"] if meta.affected else []),
             *([f"Stopped: {meta.stopped}"] if meta.stopped else []),
             *([f"First failure after {first['after_s']} s: {first['run']}"] if first else [])]
    text = summary_text(fold(results), title, wall_s, repeated=tallies(results), heads=heads)
    return text, _write_each([
        (folder / SUMMARY, lambda: text),
        (folder / REPORT, lambda: html_report(fold(results), meta, title,
                                                     exists=lambda rel: (folder / rel).is_file()))])
