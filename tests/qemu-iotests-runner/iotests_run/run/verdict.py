"""check's verdict rules: which reference output applies and what a run's evidence means.

Facts carried over from QEMU's testrunner.py: the reference is the first of
`NAME.out.nocache` (cache mode none), `NAME.out.FMT`, `NAME.MACHINE.out`,
`NAME.out` that exists (none: not run); a non-zero exit status fails; a
`NAME.notrun` file in TEST_DIR means not run, its text the reason; otherwise a
unified diff that ignores trailing whitespace (both files read with universal
newlines) decides.
"""

from __future__ import annotations

import difflib
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from iotests_run.inputs import read_optional
from iotests_run.model import Outcome, Stop

NOTRUN_BYTES = 64 * 1024


def _lines(path: Path) -> list[str]:
    # errors="replace": check would crash on invalid UTF-8; we still judge the run.
    with path.open(encoding="utf-8", errors="replace") as f:
        return [line.rstrip() for line in f]


def output_diff(reference: Path, output: Path, reference_label: str, output_label: str) -> str:
    """Unified diff ignoring trailing whitespace; empty when the outputs agree."""
    diff = difflib.unified_diff(_lines(reference), _lines(output), reference_label, output_label)
    return "\n".join(line.rstrip() for line in diff)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    diff: str = ""


STOP_OUTCOME = {Stop.TIMEOUT: Outcome.TIMEOUT, Stop.HANG: Outcome.HANG, Stop.INTERRUPTED: Outcome.INTERRUPTED}


def run_verdict(stopped: Stop | None, detail: str, returncode: int, reference: Path, output: Path,
                notrun_file: Path, reference_label: str, output_label: str) -> Verdict:
    """The verdict of a run: ours when the runner stopped it; else check's order (judge), and a failed
    run whose test or one of its processes died of a signal is a crash."""
    if stopped is not None:
        return Verdict(STOP_OUTCOME[stopped], detail)
    verdict = judge(returncode, reference, output, notrun_file, reference_label, output_label)
    crash = crash_reason(returncode, verdict.diff) if verdict.outcome is Outcome.FAIL else None
    return Verdict(Outcome.CRASH, crash, verdict.diff) if crash else verdict


def with_core(verdict: Verdict, cause: str) -> Verdict:
    """A failed run that left a core dump crashed; the core says what died of what."""
    return Verdict(Outcome.CRASH, cause, verdict.diff) if verdict.outcome is Outcome.FAIL and cause else verdict


def judge(returncode: int, reference: Path, output: Path, notrun_file: Path,
          reference_label: str, output_label: str) -> Verdict:
    """check's order: exit status, then .notrun, then the diff."""
    if returncode != 0:
        diff = output_diff(reference, output, reference_label, output_label)
        return Verdict(Outcome.FAIL, f"failed, exit status {returncode}", diff)
    reason = read_optional(notrun_file, NOTRUN_BYTES)
    if reason is not None:
        return Verdict(Outcome.NOT_RUN, reason.strip())
    diff = output_diff(reference, output, reference_label, output_label)
    if diff:
        return Verdict(Outcome.FAIL, "output mismatch", diff)
    return Verdict(Outcome.PASS, "")


# How a process killed by a signal shows up in a test's output: bash's job
# messages, QEMUMachine's warning, or our own wording.
SIGNAL_DEATH = re.compile(r"\b(Segmentation fault|Aborted|Bus error|Illegal instruction|Floating point exception|"
                          r"Trace/breakpoint trap)( \(core dumped\))?|received signal -?\d+|killed by signal")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def crash_reason(returncode: int, diff: str) -> str | None:
    """Why a failed run is a crash: the test died of a signal, or its output says a process did."""
    if returncode < 0:
        return f"the test died of {signal_name(-returncode)}"
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++") and SIGNAL_DEATH.search(line):
            return f"a process died of a signal: {line[1:].strip()[:200]}"
    return None
