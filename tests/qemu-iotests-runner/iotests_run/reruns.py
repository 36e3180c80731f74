"""What to run again, and what may fail without failing the job.

--last-failed reads the previous results.json in the results folder;
--quarantine FILE lists known-flaky runs, one per line: `TEST [FORMAT-PROTOCOL]`
(no FORMAT-PROTOCOL: every one), `#` starts a comment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from iotests_run.errors import UsageError
from iotests_run.model import Outcome, Result, Run

RERUN = frozenset({Outcome.FAIL, Outcome.TIMEOUT, Outcome.HANG, Outcome.CRASH, Outcome.FLAKY,
                   Outcome.INTERRUPTED})


def last_failed(results: Path) -> set[tuple[str, str, str]]:
    """(test key, format, protocol) of every run that failed (or was flaky or interrupted) last time."""
    try:
        data = json.loads((results / "results.json").read_text())
        return {(r.get("key") or r["test"], r["format"], r["protocol"]) for r in data["runs"]
                if Outcome(r["outcome"]) in RERUN}
    except OSError:
        raise UsageError(f"--last-failed: no previous results.json in {results}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--last-failed: unreadable {results / 'results.json'} ({exc})") from None


@dataclass(frozen=True)
class Quarantine:
    entries: frozenset[tuple[str, str | None]]  # (test name, combo or None for all)

    @staticmethod
    def read(path: Path) -> Quarantine:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"--quarantine: cannot read {path} ({exc.strerror})") from None
        entries = set()
        for number, raw in enumerate(lines, 1):
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) > 2:
                raise UsageError(f"--quarantine: {path}:{number}: expected TEST [FORMAT-PROTOCOL]: {raw.strip()}")
            entries.add((words[0], words[1] if len(words) == 2 else None))
        return Quarantine(frozenset(entries))

    def covers(self, run: Run) -> bool:
        return (run.test.name, None) in self.entries or (run.test.name, run.combo) in self.entries

    def excused(self, results: list[Result]) -> list[Result]:
        return [r for r in results if r.outcome.is_failure and self.covers(r.run)]
