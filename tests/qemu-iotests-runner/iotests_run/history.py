"""Durations of past runs (test x format x protocol), per QEMU tree, for longest-first scheduling.

One file can serve several trees (the default one in ~/.cache does: QEMU 7.2 and 10.x
trees, a developer's checkouts): durations are kept per tree identity, the QEMU
version and a digest of the tree's test names, so 041 on 7.2 never schedules 041 on
10.0. The identity does not depend on where the tree lies, so every CI shard of one
pipeline computes the same split from the cached file. The file keeps the trees used
most recently, at most MAX_TREES.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from iotests_run.model import Outcome, Result, Run

MAX_TREES = 16


def history_key(run: Run) -> str:
    return f"{run.combo}/{run.test.key}"


def tree_identity(version: str, test_keys: Iterable[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(test_keys)).encode()).hexdigest()[:12]
    return f"QEMU {version} tests:{digest}"


def _trees(path: Path) -> dict[str, Any]:
    try:
        trees = json.loads(path.read_text()).get("trees", {})
        return trees if isinstance(trees, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def load(path: Path, tree: str) -> dict[str, float]:
    """This tree's durations; an unreadable or foreign file is an empty history (it is a cache)."""
    try:
        entry = _trees(path).get(tree, {})
        return {str(k): float(v) for k, v in entry.get("durations", {}).items()}
    except (AttributeError, TypeError, ValueError):
        return {}


def save(path: Path, tree: str, old: dict[str, float], results: Iterable[Result]) -> None:
    """Remember the durations of runs that really ran; a failed save is not an error."""
    durations = dict(old)
    for r in results:
        if r.outcome in (Outcome.PASS, Outcome.FAIL, Outcome.NOT_RUN, Outcome.FLAKY) and r.duration_s > 0:
            durations[history_key(r.run)] = round(r.duration_s, 2)
    trees = {t: e for t, e in _trees(path).items() if isinstance(e, dict) and isinstance(e.get("used"), (int, float))}
    trees[tree] = {"used": time.time(), "durations": durations}
    kept = dict(sorted(trees.items(), key=lambda item: -item[1]["used"])[:MAX_TREES])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{time.monotonic_ns()}")
        tmp.write_text(json.dumps({"trees": kept}, indent=0, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass
