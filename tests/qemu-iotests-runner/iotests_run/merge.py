"""`iotests-run merge OUT DIR...`: join the results folders of CI shards into one.

Every input is read and checked, and OUT is checked against them, before anything is
written; then OUT is claimed (results_folder.claim), the shards' runs/ artifacts are copied
in, and one junit.xml, results.json and summary.txt are written there, as a single run would.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotests_run.errors import SetupError, UsageError
from iotests_run.model import Result
from iotests_run.results_folder import RUNS, Claim, Recorded, claim, read_results


@dataclass
class Merged:
    results: list[Result]
    meta: dict[str, Any]
    claim: Claim


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


def merge_folders(out: Path, inputs: list[Path]) -> Merged:
    if not inputs:
        raise UsageError("merge needs at least one results folder")
    _check_folders(out, inputs)
    shards = [read_results(folder, "merge") for folder in inputs]
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
    meta["timeline"] = []  # the first shard's samples; each shard's runs keep their own start offsets
    meta["complete"] = all(s.meta.get("complete") is True for s in shards)
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
    for shard in shards:
        source = shard.meta.get("qemu", {}).get("source") if isinstance(shard.meta.get("qemu"), dict) else None
        iotests = Path(source if isinstance(source, str) else ".") / "tests" / "qemu-iotests"
        results += [shard.result(record, iotests, held.path) for record in shard.records]
    return Merged(results, meta, held)
