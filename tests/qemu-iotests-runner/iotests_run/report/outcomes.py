"""How each outcome shows up in every report format, in one table."""

from __future__ import annotations

from dataclasses import dataclass

from iotests_run.model import Outcome


@dataclass(frozen=True)
class Presentation:
    junit: str | None  # child element of <testcase>: failure, error, skipped, or none
    tap_ok: bool
    tap_directive: str  # "" or "SKIP"
    column: str  # summary table column
    word: str  # progress output
    cell: str  # report.html matrix cell
    colour: str  # report.html cell background


PRESENTATION: dict[Outcome, Presentation] = {
    Outcome.PASS: Presentation(None, True, "", "pass", "pass", "pass", "#b9e4bc"),
    Outcome.FAIL: Presentation("failure", False, "", "fail", "FAIL", "FAIL", "#f28b82"),
    Outcome.NOT_RUN: Presentation("skipped", True, "SKIP", "not run", "not run", "not run", "#e8eaed"),
    Outcome.TIMEOUT: Presentation("error", False, "", "timeout", "TIMEOUT", "TIMEOUT", "#fbbc66"),
    Outcome.HANG: Presentation("error", False, "", "hang", "HANG", "HANG", "#fbbc66"),
    Outcome.CRASH: Presentation("error", False, "", "crash", "CRASH", "CRASH", "#d7aefb"),
    Outcome.FLAKY: Presentation(None, True, "", "flaky", "flaky", "flaky", "#fdd663"),
    Outcome.INTERRUPTED: Presentation("error", False, "", "interrupted", "interrupted", "stopped", "#aecbfa"),
    Outcome.ERROR: Presentation("error", False, "", "error", "ERROR", "ERROR", "#9aa0a6"),
}

# Summary table columns, in order.
COLUMNS = tuple(dict.fromkeys(p.column for p in PRESENTATION.values()))
