"""results.json's top-level fields (schema 3, beside "runs"): one typed record, written (`to_dict`) and read
back (`from_dict`) side by side.

A run fills it at its start (cli/stages.start_reporting), the writer adds the timeline as runs go, the end adds
when it finished and what it cost; `merge` builds the merged one from its inputs'. What is read back comes from
a file anyone can write (a CI shard): `from_dict` keeps a field only when it has the type written here, so the
pages and messages built from it never meet a string where a number belongs; `merge` checks its inputs' fields
before this (results/merge.py, one line naming the bad field). Fields of other versions are not carried over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# Written only once they have a value: what the end adds, and what only some runs have.
_ONLY_WHEN_SET = frozenset({"affected", "shard", "finished", "wall_s", "cpu_s", "repeats", "orphans", "first_failure",
                            "stopped", "durations_from",
                            "merged_from", "shards", "missing_shards"})


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _texts(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _strings(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _records(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, dict) for x in v)


def _samples(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, list) for x in v)


def _per_combo(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _strings(x) for k, x in v.items())


def _seconds_by_whom(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _number(x) for k, x in v.items())


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


@dataclass
class Meta:
    tool: str = ""
    qemu: dict[str, str] = field(default_factory=dict)  # version, source, build
    command: list[str] = field(default_factory=list)  # the run's (or the merge's) command line
    started: str = ""  # ISO 8601, UTC
    jobs: int | None = None
    planned: int = 0
    skipped_without_starting: int = 0
    environment: dict[str, dict[str, str]] = field(default_factory=dict)  # per format-protocol: the iotests variables
    withheld_from_tests: list[str] = field(default_factory=list)
    strict_flaky: bool = False
    repeat: int | None = None
    load: int = 0
    complete: bool = False  # every planned run ended (not interrupted; a merge: no shard missing)
    history_tree: str | None = None  # the tree's identity in the duration history (`merge --history`)
    timeline: list[list[Any]] = field(default_factory=list)  # [seconds, runs in flight, busy cores] samples
    affected: str | None = None  # --affected-by: "N of M runs affected by ..."
    shard: dict[str, Any] | None = None  # --shard: this part of the split (planner.ShardPart.record)
    finished: str | None = None
    wall_s: float | None = None
    cpu_s: dict[str, float] | None = None  # CPU seconds of the runner itself and of the processes it waited for
    repeats: list[dict[str, Any]] | None = None  # --repeat: each run's tally
    orphans: list[str] | None = None  # processes killed at the end that no run could be told to own
    first_failure: dict[str, Any] | None = None  # {"after_s": seconds after the start, "run": its label}
    stopped: str | None = None  # why the runs left were not started (--maxfail N reached)
    durations_from: dict[str, int] | None = None  # how many runs' predicted durations came from each source
    merged_from: list[str] | None = None  # merge: its inputs
    shards: list[dict[str, Any]] | None = None  # merge: each input's shard, command, wall time, timeline
    missing_shards: list[str] | None = None  # merge: shards of the split not among the inputs

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.name in _ONLY_WHEN_SET and getattr(self, f.name) is None)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Meta:
        """The fields of a results.json that have the type written here; the others take their defaults."""
        kept = {name: data[name] for name, accepts in _ACCEPTS.items() if name in data and accepts(data[name])}
        return cls(**kept)


_ACCEPTS: dict[str, Callable[[Any], bool]] = {
    "tool": _text, "qemu": _strings, "command": _texts, "started": _text, "jobs": _optional(_count),
    "planned": _count, "skipped_without_starting": _count, "environment": _per_combo, "withheld_from_tests": _texts,
    "strict_flaky": _flag, "repeat": _optional(_count), "load": _count, "complete": _flag,
    "history_tree": _optional(_text), "timeline": _samples, "affected": _optional(_text),
    "shard": _optional(lambda v: isinstance(v, dict)), "finished": _optional(_text), "wall_s": _optional(_number),
    "cpu_s": _optional(_seconds_by_whom), "repeats": _optional(_records), "orphans": _optional(_texts),
    "first_failure": _optional(lambda v: isinstance(v, dict) and _number(v.get("after_s")) and _text(v.get("run"))),
    "stopped": _optional(_text),
    "durations_from": _optional(lambda v: isinstance(v, dict) and all(isinstance(k, str) and _count(x)
                                                                       for k, x in v.items())),
    "merged_from": _optional(_texts), "shards": _optional(_records), "missing_shards": _optional(_texts),
}
assert set(_ACCEPTS) == {f.name for f in fields(Meta)}, "every field of Meta is read back"
