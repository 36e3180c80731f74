"""Durations of past runs (test x format x protocol), per QEMU tree, for longest-first scheduling.

One file can serve several trees (the default one in ~/.cache does: QEMU 7.2 and 10.x
trees, a developer's checkouts): durations are kept per tree identity, the QEMU
version and a digest of the tree's test names, so 041 on 7.2 never schedules 041 on
10.0. The identity does not depend on where the tree lies, so every CI shard of one
pipeline computes the same split from the cached file. The file keeps the trees used
most recently, at most MAX_TREES.

The file is a cache, but a user's file all the same: one that is not a duration history
(`{"trees": {...}}`) is refused, never replaced; entries that are not finite durations are
ignored with a warning. Saving is a read-modify-write under a lock on the file's folder, so
two invocations sharing the file both keep what they learnt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from iotests_run.errors import UsageError
from iotests_run.model import Result, Run
from iotests_run.report.files import write_atomically

MAX_TREES = 16
MAX_BYTES = 64 << 20


def history_key(run: Run) -> str:
    return f"{run.combo}/{run.test.key}"


def tree_identity(version: str, test_keys: Iterable[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(test_keys)).encode()).hexdigest()[:12]
    return f"QEMU {version} tests:{digest}"


def _read(path: Path) -> dict[str, Any] | None:
    """The file's trees; {} when it is absent or empty; None when it is not a duration history."""
    try:
        if not path.is_file() and path.exists():
            return None
        if path.stat().st_size > MAX_BYTES:
            return None
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError):
        return None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    trees = data.get("trees") if isinstance(data, dict) else None
    return trees if isinstance(trees, dict) else None


def check_usable(path: Path) -> None:
    """Refuse (before anything runs) a file that is not ours to overwrite."""
    if _read(path) is None:
        raise UsageError(f"--history {path} is not an iotests-run duration history; it is left as it is "
                         "(name another file, or remove it)")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _durations(entry: Any) -> dict[str, float] | None:
    """A tree's durations, or None when any of them is not a finite number of seconds."""
    durations = entry.get("durations") if isinstance(entry, dict) else None
    if not isinstance(durations, dict) or not all(_finite(v) for v in durations.values()):
        return None
    return {str(k): float(v) for k, v in durations.items()}


def load(path: Path, tree: str) -> tuple[dict[str, float], str | None]:
    """This tree's durations, and a warning when the file held something unusable for it (then ignored)."""
    trees = _read(path) or {}
    if tree not in trees:
        return {}, None
    durations = _durations(trees[tree])
    if durations is None:
        return {}, f"ignored the duration history of this tree in {path}: not all durations are finite seconds"
    return durations, None


def save(path: Path, tree: str, results: Iterable[Result]) -> None:
    """Add the durations of runs that really ran; a failed save is not an error (the file is a cache)."""
    learnt = {history_key(r.run): round(r.duration_s, 2) for r in results
              if r.outcome.ran_to_its_end and r.duration_s > 0}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        trees = _read(path)
        if trees is None:  # replaced by something else since the start: not ours any more
            return
        kept = {t: e for t, e in trees.items()
                if isinstance(e, dict) and _finite(e.get("used")) and _durations(e) is not None}
        durations = {**(_durations(kept.get(tree)) or {}), **learnt}
        kept[tree] = {"used": time.time(), "durations": durations}
        newest = dict(sorted(kept.items(), key=lambda item: -item[1]["used"])[:MAX_TREES])
        write_atomically(path, json.dumps({"trees": newest}, indent=0, sort_keys=True))
    except OSError:
        pass
    finally:
        os.close(fd)
