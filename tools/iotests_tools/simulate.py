"""tools/bench --simulate: replay a results.json's measured run durations onto N slots, past this machine.

    tools/bench --simulate RESULTS_JSON [--slots 2,4,8,16,32] [--format qcow2] [--warm-from EARLIER_JSON]

Each run takes the time it took in RESULTS_JSON (runs that started, a test's own not-run
included; copies of --repeat and runs known not to apply without starting left out), and N
slots run them with list scheduling: each slot that frees takes the next one in the order.
The orders compared:
- check -j N: QEMU check, one invocation per format, one after the other; its tests in name order
  handed to a multiprocessing pool with Pool.starmap's default chunks (ceil(runs / (4 N)) tests,
  each chunk to the next free worker), as testrunner.py does; and the same order one test at a
  time (greedy, what check would do with chunks of 1);
- iotests-run, all formats in one invocation, through the real planner (plan.seeds, plan.planner):
  cold before seeds (every run alike: plan order), cold (no history, no check cache: the shipped
  table of the other reference version, else estimates), cold with the table of this version (the
  table may have been made from these very runs: then it is the warm case, and says so), and warm
  (the history = these durations: the best prediction there is);
- the floor: the longest run, or the total over N, whichever is more.
The admission of the real pool (cores + 1, more while cores idle) and the runs' slowing each other
down are not modelled: slots are independent, durations fixed.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotests_run.model import Run, TestCase
from iotests_run.plan import planner, seeds

DEFAULT_SLOTS = (2, 4, 8, 16, 32)
STARTED = {"pass", "fail", "flaky", "crash", "timeout", "hang", "not-run"}  # not-run: when it took time


def makespan(order: Sequence[Run], took: Mapping[Run, float], slots: int) -> float:
    """List scheduling: each run, in order, goes to the slot that frees first; when the last one ends."""
    free = [0.0] * slots
    for run in order:
        heapq.heapreplace(free, free[0] + took[run])
    return max(free)


def chunked_makespan(order: Sequence[Run], took: Mapping[Run, float], slots: int) -> float:
    """Pool.starmap's default chunks (divmod(n, 4 * workers), rounded up), each chunk to the next free worker."""
    if not order:
        return 0.0
    size = math.ceil(len(order) / (4 * slots))
    free = [0.0] * slots
    for i in range(0, len(order), size):
        heapq.heapreplace(free, free[0] + sum(took[r] for r in order[i:i + size]))
    return max(free)


def floor(took: Mapping[Run, float], slots: int) -> float:
    return max(max(took.values(), default=0.0), sum(took.values()) / slots)


@dataclass(frozen=True)
class Measured:
    """The runs of one results.json that started, in plan order, with what each took."""

    version: str
    formats: list[str]
    runs: list[Run]
    took: dict[Run, float]


def measured(data: Mapping[str, Any], only: Sequence[str] = ()) -> Measured:
    rows = [r for r in data.get("runs") or [] if r.get("outcome") in STARTED and not r.get("copy")
            and isinstance(r.get("duration_s"), (int, float)) and r["duration_s"] > 0
            and (not only or r.get("format") in only)]
    formats = list(dict.fromkeys(str(r["format"]) for r in rows))
    protocols = list(dict.fromkeys(str(r["protocol"]) for r in rows))
    tests = {str(r.get("key") or r["test"]): TestCase(str(r.get("key") or r["test"]), Path(str(r["test"])),
                                                      frozenset()) for r in rows}
    durations = {f"{r['format']}-{r['protocol']}/{r.get('key') or r['test']}": float(r["duration_s"]) for r in rows}
    plan = [run for run in planner.matrix([tests[k] for k in sorted(tests)], formats, protocols)
            if run.id.history_key in durations]
    return Measured(str((data.get("qemu") or {}).get("version", "")), formats, plan,
                    {run: durations[run.id.history_key] for run in plan})


def check_order(m: Measured) -> list[list[Run]]:
    """One check invocation per format-protocol, its tests in name order (findtests sorts them)."""
    return [sorted((r for r in m.runs if r.combo == combo), key=lambda r: r.test.key)
            for combo in dict.fromkeys(r.combo for r in m.runs)]


def planned(m: Measured, history: Mapping[str, float], family: Mapping[str, Any]) -> list[Run]:
    """The real planner's order: seeds (history, then the table, then estimates), longest first."""
    seeded = seeds.seed(m.runs, history, {}, family)
    return planner.longest_first(m.runs, planner.costs(m.runs, seeded.durations))


def other_family(version: str, table: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The shipped table's family nearest this version among the others (an honest cold start)."""
    mine = seeds.table_for(version, table)[0]
    versions = table.get("versions") if isinstance(table.get("versions"), dict) else {}
    others = {k: v for k, v in (versions or {}).items() if k != mine}
    return seeds.table_for(version, {"versions": others}) if others else (None, {})


def same_data(m: Measured, family: Mapping[str, Any]) -> bool:
    """Whether the table agrees with these runs to its 0.1 s for nearly all of them (made from them)."""
    same = sum(1 for r in m.runs if r.protocol == "file"
               and abs((family.get(r.format) or {}).get(r.test.key, -1.0) - m.took[r]) <= 0.051)
    return same >= 0.9 * len(m.runs)


def simulate(data: Mapping[str, Any], slots: Sequence[int], table: Mapping[str, Any],
             only: Sequence[str] = (), earlier: Mapping[str, Any] | None = None) -> str:
    m = measured(data, only)
    if not m.runs:
        return "no run that started in this results.json\n"
    per_check = check_order(m)
    own_version, own = seeds.table_for(m.version, table)
    other_version, other = other_family(m.version, table)
    before = measured(earlier, only) if earlier is not None else m
    history = {r.id.history_key: before.took[r] for r in before.runs}
    orders = {"before": planner.longest_first(m.runs, planner.costs(m.runs, {})),
              "cold": planned(m, {}, other), "same": planned(m, {}, own), "warm": planned(m, history, {})}
    lines = [f"QEMU {m.version}, {', '.join(m.formats)}: {len(m.runs)} runs, {sum(m.took.values()):.1f} s in all, "
             f"longest {max(m.took.values()):.1f} s",
             f"cold: the table of QEMU {other_version or '(none: estimates only)'}; cold*: the table of QEMU "
             f"{own_version or '(none)'}" + (" (made from these very runs: the warm case)" if own_version and
                                             same_data(m, own) else "")
             + ("; warm: the history of the earlier round" if earlier is not None else
                "; warm: the history of these very runs"),
             "",
             "| slots | check -j N | check, 1 at a time | before seeds | cold | cold* | warm | floor "
             "| cold/warm | warm/floor | cold/check |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in slots:
        check = sum(chunked_makespan(part, m.took, n) for part in per_check)
        greedy = sum(makespan(part, m.took, n) for part in per_check)
        spans = {k: makespan(order, m.took, n) for k, order in orders.items()}
        low = floor(m.took, n)
        lines.append(f"| {n} | {check:.1f} s | {greedy:.1f} s | {spans['before']:.1f} s | {spans['cold']:.1f} s "
                     f"| {spans['same']:.1f} s | {spans['warm']:.1f} s | {low:.1f} s | "
                     f"{spans['cold'] / spans['warm']:.2f} | {spans['warm'] / low:.2f} | {spans['cold'] / check:.2f} |")
    return "\n".join(lines) + "\n"


def parse_slots(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or any(not 1 <= v <= 4096 for v in values):
        raise ValueError(f"bad --slots: {text} (numbers from 1 to 4096, comma-separated)")
    return values


def main(path: Path, slots: Sequence[int], only: Sequence[str], earlier: Path | None = None) -> int:
    before = json.loads(earlier.read_text(encoding="utf-8")) if earlier is not None else None
    print(simulate(json.loads(path.read_text(encoding="utf-8")), slots, seeds.shipped_table(), only, before), end="")
    return 0
