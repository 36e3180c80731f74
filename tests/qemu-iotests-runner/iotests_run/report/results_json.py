"""results.json: the machine-readable record of a run (a contract for CI and tools)."""

from __future__ import annotations

import functools
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
        "cpu_s": result.cpu_s,
        "artifacts": result.artifacts,
        "leaked": list(result.leaked),
        "key": result.run.test.key,
        "diagnostics": result.diagnostics,
        "attachments": list(result.attachments),
    }


@functools.cache
def _record_text(result: Result) -> str:
    return json.dumps(run_record(result))


def results_json(results: Iterable[Result], meta: Mapping[str, Any]) -> str:
    """The document, one run per line; each run is serialised once (the file is rewritten after every run)."""
    inner = json.dumps({k: v for k, v in meta.items() if k != "runs"}, indent=2)[1:-1].rstrip()
    runs = ",\n    ".join(_record_text(r) for r in sorted(results, key=lambda r: (r.run.combo, r.run.test.key)))
    return "{" + inner + ("," if inner else "") + f'\n  "runs": [\n    {runs}\n  ]\n}}\n'

