"""Plan the runs: the format x protocol matrix over the selected tests, longest first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from iotests_run.applicability import Declarations, declarations, not_applicable
from iotests_run.environment import NON_GENERIC_FORMATS
from iotests_run.history import history_key
from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.verdict import reference_output

# Estimate for a run never seen before: about the median quick iotest.
UNKNOWN_ESTIMATE_S = 1.0


def matrix(tests: Sequence[TestCase], formats: Sequence[str], protocols: Sequence[str]) -> list[Run]:
    return [Run(t, f, p) for f in formats for p in protocols for t in tests]


def longest_first(runs: Sequence[Run], durations: Mapping[str, float]) -> list[Run]:
    """Start the longest runs first so no core idles at the tail; ties keep plan order."""
    return sorted(runs, key=lambda r: -durations.get(history_key(r), UNKNOWN_ESTIMATE_S))


def static_verdicts(runs: Sequence[Run], default_machine: str, cachemode: str,
                    read_declarations: bool = True) -> tuple[list[Result], list[Run]]:
    """Split off the runs whose verdict is known without starting them.

    check's own rule comes first: no reference output means not run. Then,
    unless switched off, what the test declares about formats and protocols.
    """
    known: list[Result] = []
    to_run: list[Run] = []
    seen: dict[str, Declarations] = {}
    for run in runs:
        reference = reference_output(run.test.path, run.format, default_machine, cachemode)
        reason = None if reference.is_file() else f"No qualified output (expected {reference})"
        if reason is None and read_declarations:
            if run.test.key not in seen:
                seen[run.test.key] = declarations(run.test.path, run.test.python)
            reason = not_applicable(seen[run.test.key], run.format, run.protocol,
                                    run.format not in NON_GENERIC_FORMATS)
        if reason is None:
            to_run.append(run)
        else:
            known.append(Result(run, Outcome.NOT_RUN, reason))
    return known, to_run
