"""summary.txt: counts and time per format-protocol, the failures, the slowest runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tabulate import tabulate

from iotests_run.model import Outcome, Result
from iotests_run.plan.repeats import Tally
from iotests_run.report.outcomes import COLUMNS, PRESENTATION
from iotests_run.text import terminal_safe


def _table(rows: Sequence[Sequence[object]], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)

SLOWEST = 10


def closing_line(results: Sequence[Result]) -> str:
    """`N passed, N failed, N skipped`: the line CI log readers look for."""
    count = Counter(r.outcome.tally for r in results)
    return f"{count['passed']} passed, {count['failed']} failed, {count['skipped']} skipped"


def _counts_table(results: Sequence[Result]) -> str:
    """Runs by outcome column per format-protocol, counted in one pass (a merge may hold a million runs)."""
    counts: dict[str, Counter[str]] = {}
    seconds: dict[str, float] = {}
    for r in results:
        counts.setdefault(r.run.combo, Counter())[PRESENTATION[r.outcome].column] += 1
        seconds[r.run.combo] = seconds.get(r.run.combo, 0.0) + r.duration_s
    total: Counter[str] = sum(counts.values(), Counter())
    used = [c for c in COLUMNS if total[c]]
    rows: list[list[object]] = []
    for combo, count in [*sorted(counts.items()), ("total", total)]:
        spent = sum(seconds.values()) if combo == "total" else seconds[combo]
        rows.append([combo, *(count[c] for c in used), count.total(), f"{spent:.1f}"])
    return _table(rows, ["format-protocol", *used, "runs", "test time s"])


def summary_text(results: Sequence[Result], title: str, wall_s: float, repeated: Sequence[Tally] = (),
                 heads: Sequence[str] = ()) -> str:
    """The text summary; `heads` are said under the title: --affected-by's selection ("Selection: 3 of 12 runs
    affected by ..."), so that a reader (a Patchew mail, a CI log) knows the runs were a selection, or why they
    were not; --maxfail's stop; when the first failure came."""
    parts = [title, *(terminal_safe(h) for h in heads), "", _counts_table(results)]
    if repeated:
        rows = [[t.run.combo, t.run.test.name, t.attempts, t.failed,
                 ", ".join(f"{n} {k}" for k, n in sorted(t.failures.items())) or "-",
                 f"{100 * t.failed / t.attempts:.1f}%", f"{100 * t.interval[0]:.1f}-{100 * t.interval[1]:.1f}%",
                 f"{t.mean_s:.1f}"] for t in repeated]
        parts += ["", "Repeated runs (--repeat; rate with its 95% Wilson interval):",
                  _table(rows, ["format-protocol", "test", "attempts", "failed", "outcomes", "rate", "95% interval",
                                "s per attempt"])]
    bad = [r for r in results if r.outcome.is_bad]
    if bad:
        rows = [[r.run.combo, r.run.test.name, PRESENTATION[r.outcome].column, r.reason, r.artifacts or ""]
                for r in sorted(bad, key=lambda r: (r.run.combo, r.run.test.key))]
        parts += ["", "Failures:", _table(rows, ["format-protocol", "test", "outcome", "reason", "artifacts"])]
        past = [[r.run.combo, r.run.test.name, r.recent]
                for r in sorted(bad, key=lambda r: (r.run.combo, r.run.test.key)) if r.recent]
        if past:
            parts += ["", "Failures against this tree's recent history (tell a known-flaky test from a new failure):",
                      _table(past, ["format-protocol", "test", "here recently"])]
    flaky = [r for r in results if r.outcome is Outcome.FLAKY]
    if flaky:
        rows = [[r.run.combo, r.run.test.name, r.reason, r.artifacts or ""] for r in flaky]
        parts += ["", "Flaky (failed, then passed on a retry):",
                  _table(rows, ["format-protocol", "test", "attempts", "artifacts"])]
    leaks = [r for r in results if r.leaked]
    if leaks:
        rows = [[r.run.combo, r.run.test.name, proc] for r in leaks for proc in r.leaked]
        parts += ["", "Leaked processes (killed):", _table(rows, ["format-protocol", "test", "process"])]
    ran = sorted((r for r in results if r.duration_s > 0), key=lambda r: -r.duration_s)[:SLOWEST]
    if ran:
        rows = [[r.run.combo, r.run.test.name, f"{r.duration_s:.1f}"] for r in ran]
        parts += ["", "Slowest runs:", _table(rows, ["format-protocol", "test", "s"])]
    skipped_cases = [r for r in results if r.casenotrun.strip()]
    if skipped_cases:
        rows = [[r.run.combo, r.run.test.name, line.strip()] for r in skipped_cases
                for line in r.casenotrun.splitlines() if line.strip()]
        parts += ["", "Cases not run (inside tests that ran):", _table(rows, ["format-protocol", "test", "case"])]
    quarantined = [r for r in results if r.quarantined]
    if quarantined:
        parts += ["", "Quarantined (reported, not failing the job): " + ", ".join(r.run.label for r in quarantined)]
    parts += ["", f"Wall time {wall_s:.1f} s", closing_line(results)]
    return terminal_safe("\n".join(parts) + "\n")  # it is printed, and cat in CI logs
