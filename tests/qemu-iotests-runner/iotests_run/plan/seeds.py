"""Durations for runs the history has never seen: a cold start planned (nearly) as well as a warm one.

Longest-first only pays when the long runs are known before they start. Without a duration
history every run would weigh the same and the longest (10-12 s of a 15 s quick run) could
start last. So a run's predicted duration comes from the first of these that knows it:

1. the duration history (this machine, this tree: `plan.history`);
2. QEMU check's own `.last-elapsed-cache` in the build's tests/qemu-iotests folder (check
   writes it after each passing test, so a developer who used check has it; this machine);
3. the table shipped in the package (durations.json, made by tools/durations-table from runs
   on the reference trees), of this tree's QEMU version family or the nearest one, per format
   (a format it lacks: the median over the formats it has), for any protocol, scaled by how
   much slower or faster this machine ran the runs known both here and in the table;
4. an estimate from the durations found above for the same format-protocol (any source; else
   all of them; else `planner.UNKNOWN_ESTIMATE_S`): when the runs known nowhere are few (at most
   FEW_UNKNOWN of the runs), the longest of them, so they start in the first wave; else their
   90th percentile. High on purpose: a run known nowhere is a test newer than the table or
   outside the quick group it covers (the slower ones), and one that starts early costs little
   when it turns out short, while a long one that starts late is the whole tail (QEMU 10.0's
   tests/qcow2-encryption, 37 s, the longest quick run there, is not in 7.2's table: planned at
   the 90th percentile, 4 s, it made a simulated 16-slot makespan 1.2 times the warm one).

check's file is a cache anyone can write: it is read through `inputs` (a regular file, capped),
and a file that is not what check writes is ignored whole, with a warning, never a traceback.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from iotests_run.errors import UsageError
from iotests_run.inputs import number, parse_json, read_bytes
from iotests_run.model import Run
from iotests_run.text import printable

CHECK_CACHE = ".last-elapsed-cache"  # testrunner.py's LastElapsedTime, in check's working folder
CHECK_CACHE_MAX_BYTES = 16 << 20  # a full matrix of ~900 tests x 10 formats x 6 protocols is ~2 MB
MAX_SECONDS = 86400.0  # one run longer than a day is not a duration check wrote
FEW_UNKNOWN = 0.1  # at most this share of the runs known nowhere: they are estimated at the longest known
MIN_OVERLAP = 5  # runs known both here and in the table before the table is scaled to this machine
SCALE_LIMITS = (0.1, 10.0)
TABLE = "durations.json"

HISTORY, CHECK, TABLE_SOURCE, ESTIMATED = "history", "check's .last-elapsed-cache", "shipped table", "estimated"
SOURCES = (HISTORY, CHECK, TABLE_SOURCE, ESTIMATED)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{what} is not a JSON object")
    return value


def check_test_key(path: str) -> str:
    """check names a test by its path (absolute in the source tree, or as given on its command line);
    ours is the part under tests/qemu-iotests (`040`, `tests/mirror-sparse`)."""
    _, sep, tail = path.rpartition("qemu-iotests/")
    return tail if sep else path


def parse_check_cache(data: Any, what: str) -> dict[str, float]:
    """check's {test path: {protocol: {format: seconds}}} as history keys (`qcow2-file/040`) -> seconds;
    UsageError when any part is not of that shape."""
    found: dict[str, float] = {}
    for path, protocols in _mapping(data, what).items():
        for protocol, formats in _mapping(protocols, f"{what}: {printable(path)[:60]}").items():
            for fmt, seconds in _mapping(formats, f"{what}: {printable(path)[:60]} {printable(protocol)[:20]}").items():
                value = number(seconds, f"{what}: {printable(path)[:60]} {printable(protocol)[:20]} "
                                        f"{printable(fmt)[:20]}", 0, MAX_SECONDS)
                found[f"{fmt}-{protocol}/{check_test_key(path)}"] = value
    return found


def check_cache(build: Path) -> tuple[dict[str, float], str | None]:
    """The durations check recorded in this build (history keys -> s) and a warning when its file is unusable."""
    path = build / "tests" / "qemu-iotests" / CHECK_CACHE
    if not path.exists() and not path.is_symlink():
        return {}, None
    try:
        return parse_check_cache(parse_json(read_bytes(path, "check's elapsed-time cache", CHECK_CACHE_MAX_BYTES),
                                            "check's elapsed-time cache", path),
                                 f"check's elapsed-time cache {path}"), None
    except UsageError as exc:
        return {}, f"ignored {exc} (its durations are not used to plan)"


def version_family(version: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def shipped_table() -> dict[str, Any]:
    """The package's table: {"versions": {"7.2": {format: {test key: seconds}}}} (see tools/durations-table)."""
    data = json.loads(resources.files("iotests_run.plan").joinpath(TABLE).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def table_for(version: str, table: Mapping[str, Any]) -> tuple[str | None, dict[str, dict[str, float]]]:
    """The table's family for this QEMU version: the same major.minor, else the nearest one (ties: the newer)."""
    versions = table.get("versions")
    mine = version_family(version)
    if not isinstance(versions, dict) or mine is None:
        return None, {}
    families = {fam: v for v in versions if (fam := version_family(v)) is not None}
    if not families:
        return None, {}
    def distance(fam: tuple[int, int]) -> tuple[int, int]:
        return abs((fam[0] * 100 + fam[1]) - (mine[0] * 100 + mine[1])), -(fam[0] * 100 + fam[1])
    chosen = families[min(families, key=distance)]
    return chosen, versions[chosen]


def scale(known: Mapping[str, float], table: Mapping[str, float]) -> float:
    """How much longer runs take here than in the table: the median ratio over runs in both (history or
    check's cache), when there are MIN_OVERLAP of them, bounded; else 1."""
    ratios = [known[k] / table[k] for k in known.keys() & table.keys() if table[k] > 0 and known[k] > 0]
    if len(ratios) < MIN_OVERLAP:
        return 1.0
    return min(max(statistics.median(ratios), SCALE_LIMITS[0]), SCALE_LIMITS[1])


def _seconds(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_SECONDS
    return float(value) if ok else None


def _table_keys(runs: Iterable[Run], family: Mapping[str, Any]) -> dict[str, float]:
    """The table's duration of each run, by its history key. The table is per format, for any protocol; a
    format it lacks (qed, vmdk...) takes the median of the test's durations under the formats it has (a
    test long under qcow2 and raw is long under the others too)."""
    formats = {fmt: tests for fmt, tests in family.items() if isinstance(tests, dict)}
    found = {}
    for run in runs:
        if run.format in formats:
            seconds = _seconds(formats[run.format].get(run.test.key))
        else:
            known = [s for tests in formats.values() if (s := _seconds(tests.get(run.test.key))) is not None]
            seconds = statistics.median(known) if known else None
        if seconds is not None:
            found[run.id.history_key] = seconds
    return found


def high(values: list[float]) -> float:
    """The estimate of a run known nowhere: the 90th percentile of the others (within their range)."""
    if len(values) < 2:
        return values[0]
    return round(statistics.quantiles(values, n=10, method="inclusive")[-1], 2)


@dataclass(frozen=True)
class Seeds:
    """Each run's predicted seconds (by history key) and where it came from."""

    durations: dict[str, float]
    origin: dict[str, str]
    table_version: str | None = None

    def counts(self, runs: Iterable[Run]) -> Counter[str]:
        return Counter(self.origin[key] for key in {r.id.history_key for r in runs})

    def line(self, runs: Iterable[Run]) -> str:
        """`durations: 150 history, 30 check's .last-elapsed-cache, 7 shipped table (QEMU 7.2), 2 estimated`."""
        counts = self.counts(runs)
        parts = [f"{counts[s]} {s}" + (f" (QEMU {self.table_version})" if s == TABLE_SOURCE else "")
                 for s in SOURCES if counts[s]]
        return "durations: " + (", ".join(parts) if parts else "none needed")


def seed(runs: Iterable[Run], history: Mapping[str, float], check: Mapping[str, float],
         family: Mapping[str, Any], table_version: str | None = None) -> Seeds:
    """Every run's duration from the first source that knows it (see the module's docstring)."""
    runs = list(runs)
    durations: dict[str, float] = {}
    origin: dict[str, str] = {}
    for source, known in ((HISTORY, history), (CHECK, check)):
        for run in runs:
            key = run.id.history_key
            if key not in durations and key in known:
                durations[key], origin[key] = known[key], source
    table = _table_keys(runs, family)
    factor = scale({**check, **history}, table)
    for key, seconds in table.items():
        if key not in durations:
            durations[key], origin[key] = round(seconds * factor, 2), TABLE_SOURCE
    by_combo: dict[str, list[float]] = {}
    for key, seconds in durations.items():
        by_combo.setdefault(key.split("/", 1)[0], []).append(seconds)
    unknown = sum(1 for r in {r.id.history_key: r for r in runs}.values() if r.id.history_key not in durations)
    pick = max if unknown <= FEW_UNKNOWN * len({r.id.history_key for r in runs}) else high
    overall = pick(list(durations.values())) if durations else None
    for run in runs:
        key = run.id.history_key
        if key not in durations:
            combo = by_combo.get(run.combo)
            guess = pick(combo) if combo else overall
            if guess is not None:
                durations[key], origin[key] = guess, ESTIMATED
            else:
                origin[key] = ESTIMATED  # planner.estimate's own default applies
    return Seeds(durations, origin, table_version)
