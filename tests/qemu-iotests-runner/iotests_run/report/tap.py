"""TAP 13 on stdout, one line per finished run, for meson's `protocol: 'tap'`."""

from __future__ import annotations

from iotests_run.model import Outcome, Result
from iotests_run.report.outcomes import PRESENTATION
from iotests_run.text import terminal_safe

HEADER = "TAP version 13"


def _one_line(text: str) -> str:
    """A reason on the result's own line: no line break (it would forge TAP lines), no control character."""
    return " ".join(terminal_safe(text).split())


def tap_line(number: int, result: Result) -> str:
    p = PRESENTATION[result.outcome]
    line = f"{'ok' if p.tap_ok else 'not ok'} {number} {result.run.combo} {result.run.test.name}"
    if p.tap_directive:
        line += f" # {p.tap_directive} {_one_line(result.reason)}"
    elif not p.tap_ok or result.outcome is Outcome.FLAKY:
        line += f" # {result.outcome.value}: {_one_line(result.reason)}"
    if result.recent:
        line += f"\n# {_one_line(result.recent)}"
    # as check -tap prints them: each line of the test's .casenotrun as a TAP comment
    line += "".join(f"\n#{terminal_safe(case)}" for case in result.casenotrun.splitlines())
    return line


def tap_plan(count: int) -> str:
    return f"1..{count}"
