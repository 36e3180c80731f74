"""Plan the runs: the format x protocol matrix over the selected tests, longest first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from iotests_run.history import history_key
from iotests_run.model import Run, TestCase

# Estimate for a run never seen before: about the median quick iotest.
UNKNOWN_ESTIMATE_S = 1.0


def matrix(tests: Sequence[TestCase], formats: Sequence[str], protocols: Sequence[str]) -> list[Run]:
    return [Run(t, f, p) for f in formats for p in protocols for t in tests]


def longest_first(runs: Sequence[Run], durations: Mapping[str, float]) -> list[Run]:
    """Start the longest runs first so no core idles at the tail; ties keep plan order."""
    return sorted(runs, key=lambda r: -durations.get(history_key(r), UNKNOWN_ESTIMATE_S))
