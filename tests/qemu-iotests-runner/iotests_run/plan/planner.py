"""Plan the runs: the format x protocol matrix, static verdicts, CI shards, longest first."""

from __future__ import annotations

import hashlib
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iotests_run.errors import UsageError
from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.plan.history import Recent
from iotests_run.text import printable
from iotests_run.tree.applicability import Declarations, declarations, not_applicable
from iotests_run.tree.discovery import reference_output
from iotests_run.tree.environment import NON_GENERIC_FORMATS

# GitLab's `parallel:` allows 200 jobs; far more shards than runs only spread nothing thinner.
MAX_SHARDS = 1000
# Estimate for a run never seen before: about the median quick iotest.
UNKNOWN_ESTIMATE_S = 1.0


def matrix(tests: Sequence[TestCase], formats: Sequence[str], protocols: Sequence[str]) -> list[Run]:
    return [Run(t, f, p) for f in formats for p in protocols for t in tests]


def estimator(durations: Mapping[str, float]) -> dict[str, float]:
    """Per format-protocol, the median of known durations: the estimate for runs never seen."""
    by_combo: dict[str, list[float]] = {}
    for key, seconds in durations.items():
        by_combo.setdefault(key.split("/", 1)[0], []).append(seconds)
    return {combo: statistics.median(values) for combo, values in by_combo.items()}


def estimate(run: Run, durations: Mapping[str, float], medians: Mapping[str, float]) -> float:
    known = durations.get(run.id.history_key)
    if known is not None:
        return known
    return medians.get(run.combo, statistics.median(medians.values()) if medians else UNKNOWN_ESTIMATE_S)


def costs(runs: Sequence[Run], durations: Mapping[str, float]) -> dict[Run, float]:
    """Every run's predicted seconds, computed once for ordering, sharding and the ETA."""
    medians = estimator(durations)
    return {r: estimate(r, durations, medians) for r in runs}


def longest_first(runs: Sequence[Run], cost: Mapping[Run, float]) -> list[Run]:
    """Start the longest runs first so no core idles at the tail; ties keep plan order."""
    return sorted(runs, key=lambda r: -cost[r])


def closest_first(runs: Sequence[Run], rank: Mapping[Run, tuple[int, int]], cost: Mapping[Run, float]) -> list[Run]:
    """With a change to select by: the runs most specific to it first (`rank`, lowest first: see
    affected.selection.Affected.specificity), the shortest first among equals, so that a failure the change
    caused shows soonest (longest-first fills the cores better; a selection is small)."""
    return sorted(runs, key=lambda r: (*rank.get(r, (2, 0)), cost[r]))


def failed_first(runs: Sequence[Run], recent: Mapping[str, Recent]) -> tuple[list[Run], int]:
    """--failed-first: the runs whose last remembered outcome on this tree was a failure (flaky included) start
    before the others, each group in the order given; and how many there are."""
    def failed_last_time(run: Run) -> bool:
        past = recent.get(run.id.history_key)
        return past is not None and bool(past.outcomes) and Outcome.from_letter(past.outcomes[-1]).failed_here
    first = [r for r in runs if failed_last_time(r)]
    return first + [r for r in runs if not failed_last_time(r)], len(first)


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, as GitLab's CI_NODE_INDEX
    total: int

    @staticmethod
    def parse(text: str) -> Shard:
        m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not m or not 1 <= int(m.group(1)) <= int(m.group(2)) <= MAX_SHARDS:
            raise UsageError(f"bad shard: {printable(text)} (expected I/N with 1 <= I <= N <= {MAX_SHARDS})")
        return Shard(int(m.group(1)), int(m.group(2)))


def split(runs: Sequence[Run], cost: Mapping[Run, float], total: int) -> list[list[Run]]:
    """Duration-balanced, deterministic split: longest first onto the least loaded shard.

    Every machine computes the same split from the same plan and history, so the
    shards are disjoint and together complete.
    """
    shards: list[list[Run]] = [[] for _ in range(total)]
    load = [0.0] * total
    for run in sorted(runs, key=lambda r: (-cost[r], r.combo, r.test.key)):
        # free runs (known not to apply) only need spreading by number
        weigh = (lambda i: (len(shards[i]), i)) if cost[run] == 0 else (lambda i: (load[i], len(shards[i]), i))
        target = min(range(total), key=weigh)
        shards[target].append(run)
        load[target] += cost[run]
    return shards


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


def shard_from_ci(environ: Mapping[str, str]) -> Shard | None:
    """GitLab's `parallel:` sets CI_NODE_INDEX and CI_NODE_TOTAL. A job without `parallel:` has
    CI_NODE_TOTAL=1 (and gitlab-ci-local sets an index there too): one shard, the whole plan."""
    index, total = environ.get("CI_NODE_INDEX"), environ.get("CI_NODE_TOTAL")
    if total is not None and total.strip() == "1":
        return None
    if index and total:
        try:
            return Shard.parse(f"{index}/{total}")
        except UsageError:
            raise UsageError(f"bad shard from CI_NODE_INDEX={printable(index)} "
                             f"CI_NODE_TOTAL={printable(total)}") from None
    return None


@dataclass(frozen=True)
class ShardPart:
    """What one shard took of the split, and a digest of the whole split: every shard of one
    pipeline must compute the same one (same selection, same duration history), else runs are
    missed or doubled; `merge` compares them."""

    shard: Shard
    runs: int  # this shard's
    of_runs: int  # all shards'
    loads: tuple[float, ...]  # predicted seconds per shard
    split: str

    def note(self) -> str:
        mean = sum(self.loads) / len(self.loads)
        return (f"iotests-run: shard {self.shard.index}/{self.shard.total}: {self.runs} of {self.of_runs} runs, "
                f"predicted {self.loads[self.shard.index - 1]:.1f} s (mean {mean:.1f} s, "
                f"largest {max(self.loads):.1f} s)")

    def record(self) -> dict[str, Any]:
        return {"index": self.shard.index, "total": self.shard.total, "runs": self.runs, "of_runs": self.of_runs,
                "predicted_s": [round(x, 2) for x in self.loads], "split": self.split}


def take_shard(shard: Shard, skipped: list[Result], to_run: list[Run],
               to_run_cost: Mapping[Run, float]) -> tuple[list[Result], list[Run], ShardPart]:
    """This shard's part of the plan."""
    cost = {**to_run_cost, **{r.run: 0.0 for r in skipped}}
    shards = split(list(cost), cost, shard.total)
    mine = set(shards[shard.index - 1])
    digest = hashlib.sha256("\n".join(f"{i} {r.id.history_key}" for i, part in enumerate(shards, 1)
                                      for r in sorted(part, key=lambda r: r.id.history_key)).encode()).hexdigest()[:16]
    part = ShardPart(shard, len(mine), len(cost), tuple(sum(cost[r] for r in s) for s in shards), digest)
    return [r for r in skipped if r.run in mine], [r for r in to_run if r in mine], part


def without_protocols(missing: Mapping[str, str], skipped: list[Result],
                      to_run: list[Run]) -> tuple[list[Result], list[Run]]:
    """Runs over a protocol whose driver or service is missing here are not run, with the reason."""
    if not missing:
        return skipped, to_run
    return (skipped + [Result(r, Outcome.NOT_RUN, missing[r.protocol]) for r in to_run if r.protocol in missing],
            [r for r in to_run if r.protocol not in missing])


def listing(skipped: list[Result], runs: list[Run], why: Mapping[Run, str] | None = None) -> str:
    """--list: one line per run, tab-separated: test, format, protocol, `run` (`run: WHY` when a change
    selected it) or `skip: REASON`."""
    why = why or {}
    rows = [(r.run, f"skip: {r.reason}") for r in skipped] + [(r, f"run: {why[r]}" if r in why else "run")
                                                              for r in runs]
    return "".join(f"{run.test.name}\t{run.format}\t{run.protocol}\t{what}\n"
                   for run, what in sorted(rows, key=lambda row: (row[0].combo, row[0].test.key)))
