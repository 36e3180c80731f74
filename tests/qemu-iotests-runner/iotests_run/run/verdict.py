"""check's verdict rules: which reference output applies and what a run's evidence means.

Facts carried over from QEMU's testrunner.py: the reference is the first of
`NAME.out.nocache` (cache mode none), `NAME.out.FMT`, `NAME.MACHINE.out`,
`NAME.out` that exists (none: not run); a non-zero exit status fails; a
`NAME.notrun` file in TEST_DIR means not run, its text the reason; otherwise a
unified diff that ignores trailing whitespace (both files read with universal
newlines) decides. The output is compared streaming, and the diff kept is capped (outputs.py).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, replace
from pathlib import Path

from iotests_run.debug.diagnostics import Evidence
from iotests_run.inputs import read_optional
from iotests_run.model import Outcome, Stop
from iotests_run.outputs import capped_diff, outputs_agree, reference_lines, tail_lines

NOTRUN_BYTES = 64 * 1024




def output_diff(reference: Path, output: Path, reference_label: str, output_label: str) -> str:
    """Unified diff ignoring trailing whitespace; empty when the outputs agree (capped: outputs.capped_diff)."""
    return capped_diff(reference, output, reference_label, output_label).text


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    diff: str = ""
    # a truncated diff's output: the lines at its end that the reference lacks (searched for crash messages)
    unseen: tuple[str, ...] = ()


STOP_OUTCOME = {Stop.TIMEOUT: Outcome.TIMEOUT, Stop.HANG: Outcome.HANG, Stop.INTERRUPTED: Outcome.INTERRUPTED,
               Stop.CRASH: Outcome.CRASH}


def run_verdict(stopped: Stop | None, detail: str, returncode: int, reference: Path, output: Path,
                notrun_file: Path, reference_label: str, output_label: str) -> Verdict:
    """The verdict of a run: ours when the runner stopped it; else check's order (judge), and a failed
    run whose test or one of its processes died of a signal is a crash."""
    if stopped is not None:
        return Verdict(STOP_OUTCOME[stopped], detail)
    verdict = judge(returncode, reference, output, notrun_file, reference_label, output_label)
    crash = crash_reason(returncode, verdict.diff, verdict.unseen) if verdict.outcome is Outcome.FAIL else None
    return Verdict(Outcome.CRASH, crash, verdict.diff) if crash else verdict


def with_core(verdict: Verdict, cause: str) -> Verdict:
    """A failed run that left a core dump crashed; the core says what died of what."""
    return Verdict(Outcome.CRASH, cause, verdict.diff) if verdict.outcome is Outcome.FAIL and cause else verdict


def with_sanitizer(verdict: Verdict, cause: str) -> Verdict:
    """A run in which a sanitizer reported an error crashed, whatever its test then did (said after the cause):
    the first memory or UB error of its processes is the story, even when the test passed (the report went to a
    file, not to the output it is judged by) or waited for a QEMU the report ended. A crash already, or a run
    the user interrupted, stays what it is."""
    if verdict.outcome in (Outcome.CRASH, Outcome.INTERRUPTED) or not cause:
        return verdict
    then = f"; then {verdict.outcome.value}: {verdict.reason}" if verdict.reason else ""
    return Verdict(Outcome.CRASH, f"{cause}{then}", verdict.diff)


def judge(returncode: int, reference: Path, output: Path, notrun_file: Path,
          reference_label: str, output_label: str) -> Verdict:
    """check's order: exit status, then .notrun, then whether the outputs agree (streamed: outputs.py)."""
    if returncode != 0:
        return _failed(f"failed, exit status {returncode}", reference, output, reference_label, output_label)
    reason = read_optional(notrun_file, NOTRUN_BYTES)
    if reason is not None:
        return Verdict(Outcome.NOT_RUN, reason.strip())
    if outputs_agree(reference_lines(reference), output):
        return Verdict(Outcome.PASS, "")
    return _failed("output mismatch", reference, output, reference_label, output_label)


def _failed(reason: str, reference: Path, output: Path, reference_label: str, output_label: str) -> Verdict:
    """A failure with its capped diff; when the diff was cut, the output's last lines the reference lacks too."""
    diff = capped_diff(reference, output, reference_label, output_label)
    unseen: tuple[str, ...] = ()
    if diff.truncated:
        known = set(reference_lines(reference))
        unseen = tuple(line for line in tail_lines(output) if line not in known)
    return Verdict(Outcome.FAIL, reason, diff.text, unseen)


# How a process killed by a signal shows up in a test's output: bash's job
# messages, QEMUMachine's warning, or our own wording.
SIGNAL_DEATH = re.compile(r"\b(Segmentation fault|Aborted|Bus error|Illegal instruction|Floating point exception|"
                          r"Trace/breakpoint trap)( \(core dumped\))?|received signal -?\d+|killed by signal")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def crash_reason(returncode: int, diff: str, unseen: tuple[str, ...] = ()) -> str | None:
    """Why a failed run is a crash: the test died of a signal, or its output says a process did (in a line
    the diff adds, or in the end of an output too large for the diff)."""
    if returncode < 0:
        return f"the test died of {signal_name(-returncode)}"
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    for line in [*added, *unseen]:
        if SIGNAL_DEATH.search(line):
            return f"a process died of a signal: {line.strip()[:200]}"
    return None


def explained(verdict: Verdict, evidence: list[Evidence]) -> tuple[Verdict, str]:
    """The explanation of a failure's dump (a core's first: a crash's cause beats the hang it led to) and the
    verdict with that explanation's first line leading its reason, so that every surface that shows one line
    (the terminal, summary.txt, JUnit's message, TAP) names the cause."""
    found = [e.explanation.strip() for e in sorted(evidence, key=lambda e: not e.cause) if e.explanation.strip()]
    if not found or verdict.outcome is Outcome.PASS:
        return verdict, ""
    first = found[0].splitlines()[0]
    return replace(verdict, reason=f"{first} ({verdict.reason})" if verdict.reason else first), found[0]
