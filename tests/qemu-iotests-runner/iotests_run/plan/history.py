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
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tabulate import tabulate

from iotests_run.errors import UsageError
from iotests_run.files import write_atomically
from iotests_run.model import Outcome, Result
from iotests_run.text import printable

MAX_TREES = 16
MAX_BYTES = 64 << 20
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")  # last_failure, as save writes it; anything else is ignored
RECENT = 50  # outcomes remembered per run (test x format x protocol)
LETTERS = frozenset(o.letter for o in Outcome if o.letter is not None)


def tree_identity(version: str, test_keys: Iterable[str], sanitizers: Iterable[str] = ()) -> str:
    """A sanitizer build is a tree of its own: its runs take two to ten times as long, and a --hang-factor limit
    learnt from a plain build's durations would call them hung (and the reverse would blunt it)."""
    digest = hashlib.sha256("\n".join(sorted(test_keys)).encode()).hexdigest()[:12]
    flavour = f" ({'+'.join(sorted(sanitizers))} sanitizers)" if sanitizers else ""
    return f"QEMU {version}{flavour} tests:{digest}"


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


def check_usable(path: Path, named: bool = True) -> None:
    """Refuse (before anything runs) a file that is not ours to overwrite; named: given as --history."""
    if _read(path) is None:
        what = "--history" if named else "the duration history (the default one; --history FILE names another)"
        raise UsageError(f"{what} {printable(str(path))} is not an iotests-run duration history; it is left as it "
                         "is (name another file, or remove it)")


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


@dataclass(frozen=True)
class Recent:
    """A run's remembered outcomes on this tree (oldest first) and when it last failed."""

    outcomes: str
    last_failure: str | None = None

    @property
    def failed(self) -> int:
        return sum(Outcome.from_letter(letter).failed_here for letter in self.outcomes)

    def phrase(self) -> str:
        """What a failure's report says about its past here."""
        if not self.failed:
            return (f"first failure recorded (passed the last {len(self.outcomes)} runs on this tree)"
                    if self.outcomes else "first failure recorded (no earlier run on this tree)")
        return f"failed {self.failed} of the last {len(self.outcomes)} runs on this tree"


def recent(path: Path, tree: str) -> dict[str, Recent]:
    """Every run's recent outcomes on this tree (history_key -> Recent), as the file holds them now."""
    entry = (_read(path) or {}).get(tree)
    outcomes = entry.get("outcomes") if isinstance(entry, dict) else None
    failures = entry.get("last_failure") if isinstance(entry, dict) else None
    if not isinstance(outcomes, dict):
        return {}
    failures = failures if isinstance(failures, dict) else {}
    return {str(k): Recent(v, failures.get(k) if isinstance(failures.get(k), str) and STAMP.fullmatch(failures[k])
                           else None)
            for k, v in outcomes.items() if isinstance(v, str) and set(v) <= LETTERS}


def last_passed(path: Path, tree: str) -> dict[str, float]:
    """The duration of every run whose latest remembered outcome on this tree is a pass (history_key -> s)."""
    durations, _ = load(path, tree)
    return {key: durations[key] for key, past in recent(path, tree).items()
            if past.outcomes.endswith(str(Outcome.PASS.letter)) and key in durations}


def save(path: Path, tree: str, results: Iterable[Result]) -> None:
    """Add the durations of runs that really ran, and every run's outcome to its recent history;
    a failed save is not an error (the file is a cache)."""
    results = list(results)
    path = Path(os.path.realpath(path))  # a history reached through a link is saved at its target, link kept
    learnt = {r.run.id.history_key: round(r.duration_s, 2) for r in results
              if r.outcome.ran_to_its_end and r.duration_s > 0}
    letters: dict[str, str] = {}
    failed_now: set[str] = set()
    for r in sorted(results, key=lambda r: r.run.copy):
        if r.outcome.letter is not None:
            letters[r.run.id.history_key] = letters.get(r.run.id.history_key, "") + r.outcome.letter
            if r.outcome.failed_here:
                failed_now.add(r.run.id.history_key)
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
        past = recent(path, tree)
        outcomes = {k: r.outcomes for k, r in past.items()}
        for key, new in letters.items():
            outcomes[key] = (outcomes.get(key, "") + new)[-RECENT:]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        last_failure = {k: r.last_failure for k, r in past.items() if r.last_failure}
        last_failure.update({k: stamp for k in failed_now})
        kept[tree] = {"used": time.time(), "durations": durations, "outcomes": outcomes, "last_failure": last_failure}
        newest = dict(sorted(kept.items(), key=lambda item: -item[1]["used"])[:MAX_TREES])
        write_atomically(path, json.dumps({"trees": newest}, indent=0, sort_keys=True))
    except OSError:
        pass
    finally:
        os.close(fd)


def with_past(result: Result, past: Mapping[str, Recent]) -> Result:
    """A failure, with what its run's recent history on this tree says (read before this invocation)."""
    if not result.outcome.is_failure:
        return result
    return replace(result, recent=past.get(result.run.id.history_key, Recent("")).phrase())


def flaky_report(past: Mapping[str, Recent]) -> str:
    """--flaky-report: the runs with failures in their recent history here, highest rate first."""
    rows = []
    for key, r in past.items():
        if not r.failed:
            continue
        combo, _, test = key.partition("/")
        kinds = ", ".join(f"{r.outcomes.count(o.letter)} {o.value}" for o in Outcome
                          if o.failed_here and o.letter is not None and o.letter in r.outcomes)
        rows.append((r.failed / len(r.outcomes), [printable(combo), printable(test.removeprefix("tests/")),
                                                  len(r.outcomes), r.failed,
                                                  f"{100 * r.failed / len(r.outcomes):.1f}%", kinds,
                                                  r.last_failure or "?"]))
    if not rows:
        return f"No run failed in its recent history on this tree ({len(past)} runs remembered, the last {RECENT} " \
               "outcomes of each).\n"
    table = tabulate([row for _, row in sorted(rows, key=lambda x: (-x[0], x[1][0], x[1][1]))],
                     headers=["format-protocol", "test", "runs", "failed", "rate", "outcomes", "last failure (UTC)"],
                     tablefmt="simple", disable_numparse=True)
    return f"Runs that failed in their recent history on this tree (the last {RECENT} outcomes of each):\n{table}\n"
