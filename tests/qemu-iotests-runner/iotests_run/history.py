"""Durations of past runs (test x format x protocol), for longest-first scheduling."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from iotests_run.model import Outcome, Result, Run


def history_key(run: Run) -> str:
    return f"{run.combo}/{run.test.key}"


def load(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
        return {str(k): float(v) for k, v in data.get("durations", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def save(path: Path, old: dict[str, float], results: Iterable[Result]) -> None:
    """Remember the durations of runs that really ran; a failed save is not an error."""
    durations = dict(old)
    for r in results:
        if r.outcome in (Outcome.PASS, Outcome.FAIL, Outcome.NOT_RUN, Outcome.FLAKY) and r.duration_s > 0:
            durations[history_key(r.run)] = round(r.duration_s, 2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"durations": durations}, indent=0, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass
