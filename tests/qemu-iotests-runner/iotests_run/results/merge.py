"""`iotests-run merge OUT DIR...`: join the results folders of CI shards into one.

Every input is read and checked, and OUT is checked against them, before anything is
written; then OUT is claimed (results_folder.claim), the shards' runs/ artifacts are copied
in, and one junit.xml, results.json and summary.txt are written there, as a single run would.

Shards of one split (`--shard I/N`, GitLab's `parallel:`) must have computed the same split:
each records a digest of it, and shards that disagree (their duration histories differed, so
runs were missed or doubled) are refused. A shard of the split that is not among the inputs
makes the merge incomplete. Each input keeps its own timeline (meta "shards", each run's
"shard"), and `--history FILE` records the merged runs as a single run would, so that one job
can be the duration cache's only writer.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from iotests_run.errors import SetupError, UsageError
from iotests_run.model import Result
from iotests_run.plan import history
from iotests_run.results.folder import RUNS, Claim, Recorded, claim, read_results


@dataclass
class Merged:
    results: list[Result]
    meta: dict[str, Any]
    claim: Claim
    tree: str | None  # the inputs' common duration-history identity, asked for by `--history`


def _meta_number(shard: Recorded, name: str, default: float) -> float:
    value = shard.meta.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UsageError(f"merge: {shard.folder / 'results.json'}: {name}: expected a number")
    return float(value)


def _check_folders(out: Path, inputs: list[Path]) -> None:
    target = out.resolve()
    seen: dict[Path, Path] = {}
    for folder in inputs:
        real = folder.resolve()
        if real in seen:
            raise UsageError(f"merge: {folder} is named twice (as {seen[real]})")
        seen[real] = folder
        if real == target or real in target.parents or target in real.parents:
            raise UsageError(f"merge: OUT {out} overlaps the input {folder}: name a folder outside every input")


def _split_of(shard: Recorded) -> dict[str, Any] | None:
    part = shard.meta.get("shard")
    if part is None:
        return None
    if not (isinstance(part, dict) and isinstance(part.get("index"), int) and isinstance(part.get("total"), int)
            and isinstance(part.get("split"), str) and 1 <= part["index"] <= part["total"]):
        raise UsageError(f"merge: {shard.folder / 'results.json'}: shard: expected index, total and split")
    return part


def missing_shards(shards: list[Recorded]) -> list[str]:
    """Shards of the inputs' split that are not among them ("2/3"); refuses shards of different splits."""
    parts = [(s, p) for s in shards if (p := _split_of(s)) is not None]
    if not parts:
        return []
    first, part = parts[0]
    seen: dict[int, Path] = {}
    for shard, other in parts:
        if (other["total"], other["split"]) != (part["total"], part["split"]):
            raise UsageError(f"merge: {shard.folder} (shard {other['index']}/{other['total']}) and {first.folder} "
                             f"(shard {part['index']}/{part['total']}) computed different splits (different "
                             "selections or duration histories): runs may be missing or doubled")
        if other["index"] in seen:
            raise UsageError(f"merge: shard {other['index']}/{other['total']} is both {seen[other['index']]} "
                             f"and {shard.folder}")
        seen[other["index"]] = shard.folder
    return [f"{i}/{part['total']}" for i in range(1, part["total"] + 1) if i not in seen]


def _common_tree(shards: list[Recorded]) -> str:
    trees = {s.meta.get("history_tree") for s in shards}
    if len(trees) != 1 or not all(isinstance(t, str) for t in trees):
        raise UsageError("merge --history: the inputs do not name one QEMU tree (history_tree differs or is absent: "
                         "shards of different trees, or written by an older iotests-run)")
    return str(trees.pop())


def merge_folders(out: Path, inputs: list[Path], command: list[str], history_file: Path | None = None) -> Merged:
    if not inputs:
        raise UsageError("merge needs at least one results folder")
    _check_folders(out, inputs)
    shards = [read_results(folder, "merge") for folder in inputs]
    missing = missing_shards(shards)
    tree = None
    if history_file is not None:
        history.check_usable(history_file)
        tree = _common_tree(shards)
    seen: dict[tuple[str, str, str, int], Path] = {}
    for shard in shards:
        for (key, fmt, proto), record in zip(shard.idents(), shard.records, strict=True):
            ident = (key, fmt, proto, record.get("copy", 0))
            if ident in seen:
                raise UsageError(f"merge: run {fmt}-{proto} {key} is in both {seen[ident]} "
                                 f"and {shard.folder}")
            seen[ident] = shard.folder
    meta = dict(shards[0].meta)
    meta["merged_from"] = [str(f) for f in inputs]
    meta.pop("shard", None)
    meta["timeline"] = []  # each shard's samples are in its entry of "shards"
    meta["command"] = command  # the merge's; each shard's stays in its entry of "shards"
    meta["shards"] = [{"folder": str(folder), "shard": s.meta.get("shard"), "started": s.meta.get("started"),
                       "command": s.meta.get("command") if isinstance(s.meta.get("command"), list) else [],
                       "wall_s": s.meta.get("wall_s"), "complete": s.meta.get("complete") is True,
                       "timeline": s.meta.get("timeline") if isinstance(s.meta.get("timeline"), list) else []}
                      for folder, s in zip(inputs, shards, strict=True)]
    meta["missing_shards"] = missing
    meta["complete"] = all(s.meta.get("complete") is True for s in shards) and not missing
    meta["strict_flaky"] = any(s.meta.get("strict_flaky") is True for s in shards)
    meta["planned"] = int(sum(_meta_number(s, "planned", 0) for s in shards))
    meta["wall_s"] = max(_meta_number(s, "wall_s", 0.0) for s in shards)  # shards run side by side
    held = claim(out, "merge OUT")
    try:
        for folder in inputs:
            if (folder / RUNS).is_dir():
                shutil.copytree(folder / RUNS, held.path / RUNS, symlinks=True, dirs_exist_ok=True)
    except (OSError, shutil.Error) as exc:
        raise SetupError(f"cannot write merged results to {out}: {exc}") from None
    results = []
    for number, shard in enumerate(shards, 1):
        source = shard.meta.get("qemu", {}).get("source") if isinstance(shard.meta.get("qemu"), dict) else None
        iotests = Path(source if isinstance(source, str) else ".") / "tests" / "qemu-iotests"
        results += [replace(shard.result(record, iotests, held.path), shard=number) for record in shard.records]
    return Merged(results, meta, held, tree)
