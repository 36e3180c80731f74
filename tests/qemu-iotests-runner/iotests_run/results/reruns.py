"""What to run again, and what may fail without failing the job.

--last-failed reads the previous results.json in the results folder;
--quarantine FILE lists known-flaky runs, one per line: `TEST [FORMAT-PROTOCOL]`
(no FORMAT-PROTOCOL: every one), `#` starts a comment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from iotests_run.errors import UsageError
from iotests_run.inputs import read_text
from iotests_run.model import Outcome, Result, Run, RunId
from iotests_run.results.folder import read_results
from iotests_run.text import printable


def last_failed(results: Path) -> set[RunId]:
    """Every run that failed (or was flaky or interrupted) last time (its copies folded into the run)."""
    recorded = read_results(results, "--last-failed")
    return {ident.base for ident, record in zip(recorded.idents(), recorded.records, strict=True)
            if Outcome(record["outcome"]).is_notable}


@dataclass(frozen=True)
class Quarantine:
    entries: frozenset[tuple[str, str | None]]  # (test name, combo or None for all)

    @staticmethod
    def read(path: Path) -> Quarantine:
        lines = read_text(path, "--quarantine", 1 << 20).splitlines()
        entries = set()
        for number, raw in enumerate(lines, 1):
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) > 2:
                raise UsageError(f"--quarantine: {path}:{number}: expected TEST [FORMAT-PROTOCOL]: "
                                 f"{printable(raw.strip())}")
            entries.add((words[0], words[1] if len(words) == 2 else None))
        return Quarantine(frozenset(entries))

    def covers(self, run: Run) -> bool:
        return (run.test.name, None) in self.entries or (run.test.name, run.combo) in self.entries

    def mark(self, result: Result) -> Result:
        """A failure this quarantine covers comes back marked so; any other result as it is."""
        return replace(result, quarantined=True) if result.outcome.is_failure and self.covers(result.run) else result
