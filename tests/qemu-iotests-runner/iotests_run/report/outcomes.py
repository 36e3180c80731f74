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


PRESENTATION: dict[Outcome, Presentation] = {
    Outcome.PASS: Presentation(None, True, "", "pass", "pass"),
    Outcome.FAIL: Presentation("failure", False, "", "fail", "FAIL"),
    Outcome.NOT_RUN: Presentation("skipped", True, "SKIP", "not run", "not run"),
    Outcome.TIMEOUT: Presentation("error", False, "", "timeout", "TIMEOUT"),
    Outcome.HANG: Presentation("error", False, "", "hang", "HANG"),
    Outcome.CRASH: Presentation("error", False, "", "crash", "CRASH"),
    Outcome.FLAKY: Presentation(None, True, "", "flaky", "flaky"),
    Outcome.INTERRUPTED: Presentation("error", False, "", "interrupted", "interrupted"),
}

# Summary table columns, in order.
COLUMNS = tuple(dict.fromkeys(p.column for p in PRESENTATION.values()))
