"""Regenerate the duration table shipped in the package (iotests_run/plan/durations.json), never typed by hand.

    tools/durations-table [--output FILE] INPUT...

Each INPUT is an iotests-run results.json (its QEMU version from the `qemu` record, its runs'
`duration_s`) or a duration history ({"trees": ...}: each tree's version from its identity,
`QEMU 7.2.0 tests:<digest>`). Only runs that ran to their end on the `file` protocol count, as
the duration history learns them (passes, failures, flaky, and a test's own not-run after it
started: it takes that long again; a stopped run's time says nothing of the test's length, and one
known not to apply without starting took none).
The table is keyed by QEMU version family (major.minor), then format, then the test's key; a run
seen in several inputs gets the median of its durations. Families in the existing output that no
input covers are kept as they are, so the 7.2 and the 10.0 tables can be regenerated apart.

Make one from the reference trees (`make reference-qemu`, `make reference-qemu-10`):
    iotests-run -f qcow2,raw -g quick --qemu-source SRC --qemu-build BUILD --results /tmp/r-7.2
    tools/durations-table /tmp/r-7.2/results.json /tmp/r-10.0/results.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from iotests_run.plan.seeds import TABLE, version_family
from iotests_tools import RUNNER, summary

OUTPUT = RUNNER / "iotests_run" / "plan" / TABLE
RAN = {"pass", "fail", "flaky", "not-run"}  # model.Outcome.ran_to_its_end; not-run counts when it started
IDENTITY = re.compile(r"QEMU (\S+) tests:")

Durations = dict[str, dict[str, dict[str, list[float]]]]  # family -> format -> test key -> seconds seen


def family_name(version: str) -> str | None:
    fam = version_family(version)
    return f"{fam[0]}.{fam[1]}" if fam else None


def from_results(data: dict[str, Any]) -> Iterator[tuple[str, str, str, float]]:
    """(family, format, test key, seconds) of a results.json's runs that ran to their end on `file`."""
    family = family_name(str((data.get("qemu") or {}).get("version", "")))
    if family is None:
        return
    for run in data.get("runs") or []:
        if (run.get("outcome") in RAN and run.get("protocol") == "file" and isinstance(run.get("duration_s"), float)
                and run["duration_s"] > 0 and not run.get("copy")):
            yield family, str(run["format"]), str(run.get("key") or run["test"]), run["duration_s"]


def from_history(data: dict[str, Any]) -> Iterator[tuple[str, str, str, float]]:
    """The same from a duration history: every tree's `file` durations."""
    for identity, entry in (data.get("trees") or {}).items():
        m = IDENTITY.match(identity)
        family = family_name(m.group(1)) if m else None
        if family is None or not isinstance(entry, dict):
            continue
        for key, seconds in (entry.get("durations") or {}).items():
            combo, _, test = key.partition("/")
            fmt, _, protocol = combo.partition("-")
            if protocol == "file" and isinstance(seconds, (int, float)) and seconds > 0:
                yield family, fmt, test, float(seconds)


def collect(paths: list[Path]) -> Durations:
    seen: Durations = {}
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = from_history(data) if "trees" in data else from_results(data)
        for family, fmt, test, seconds in rows:
            seen.setdefault(family, {}).setdefault(fmt, {}).setdefault(test, []).append(seconds)
    return seen


def table(seen: Durations, existing: dict[str, Any]) -> dict[str, Any]:
    """The new document: the inputs' families (medians, 0.1 s), the existing file's other families kept."""
    versions = {fam: body for fam, body in (existing.get("versions") or {}).items() if fam not in seen}
    for fam, formats in seen.items():
        versions[fam] = {fmt: {test: round(statistics.median(values), 1) for test, values in sorted(tests.items())}
                         for fmt, tests in sorted(formats.items())}
    return {"generated_by": "tools/durations-table (do not edit by hand)",
            "versions": dict(sorted(versions.items(), key=lambda item: version_family(item[0]) or (0, 0)))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=summary(__doc__))
    p.add_argument("--output", type=Path, default=OUTPUT)
    p.add_argument("inputs", nargs="+", type=Path, help="results.json files or duration histories")
    args = p.parse_args(argv)
    seen = collect(args.inputs)
    if not seen:
        p.error("no run that ran to its end on the file protocol in the inputs")
    existing = json.loads(args.output.read_text(encoding="utf-8")) if args.output.is_file() else {}
    document = table(seen, existing)
    args.output.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    for fam, formats in document["versions"].items():
        print(f"QEMU {fam}: " + ", ".join(f"{fmt} {len(tests)} tests" for fmt, tests in formats.items()))
    return 0
