"""results.json: the machine-readable record of a run (a contract for CI and tools)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from iotests_run.model import Result


def run_record(result: Result) -> dict[str, Any]:
    return {
        "test": result.run.test.name,
        "format": result.run.format,
        "protocol": result.run.protocol,
        "outcome": result.outcome.value,
        "reason": result.reason,
        "duration_s": result.duration_s,
        "artifacts": result.artifacts,
        "leaked": list(result.leaked),
        "key": result.run.test.key,
        "diagnostics": result.diagnostics,
        "attachments": list(result.attachments),
    }


def results_json(results: Iterable[Result], meta: Mapping[str, Any]) -> str:
    runs = [run_record(r) for r in sorted(results, key=lambda r: (r.run.combo, r.run.test.key))]
    return json.dumps({**meta, "runs": runs}, indent=2) + "\n"
