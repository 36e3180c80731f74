"""`iotests-run merge OUT DIR...`: join the results folders of CI shards into one.

Reads each shard's results.json, copies its runs/ artifacts, and writes one
junit.xml, results.json and summary.txt in OUT, exactly as a single run would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from iotests_run.errors import SetupError, UsageError
from iotests_run.model import Outcome, Result, Run, TestCase


def _load(folder: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((folder / "results.json").read_text())
        if not isinstance(data.get("runs"), list):
            raise ValueError("no runs list")
        return data
    except (OSError, ValueError, AttributeError) as exc:
        raise UsageError(f"not a results folder: {folder} ({exc})") from None


def _result(record: dict[str, Any], iotests: Path, out: Path) -> Result:
    key = record.get("key") or record["test"]
    run = Run(TestCase(key=key, path=iotests / key, groups=frozenset()), record["format"], record["protocol"])
    artifacts = record.get("artifacts")
    diff = ""
    if artifacts and (out / artifacts / "diff.txt").is_file():
        diff = (out / artifacts / "diff.txt").read_text(encoding="utf-8", errors="replace").rstrip("\n")
    return Result(run, Outcome(record["outcome"]), record.get("reason", ""), float(record.get("duration_s", 0)),
                  diff=diff, artifacts=artifacts, diagnostics=record.get("diagnostics", ""),
                  attachments=tuple(record.get("attachments", ())), leaked=tuple(record.get("leaked", ())),
                  cpu_s=None if record.get("cpu_s") is None else float(record["cpu_s"]))


def merge_folders(out: Path, inputs: list[Path]) -> tuple[list[Result], dict[str, Any]]:
    if not inputs:
        raise UsageError("merge needs at least one results folder")
    shards = [_load(folder) for folder in inputs]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for folder in inputs:
            if (folder / "runs").is_dir() and folder.resolve() != out.resolve():
                shutil.copytree(folder / "runs", out / "runs", symlinks=True, dirs_exist_ok=True)
    except OSError as exc:
        raise SetupError(f"cannot write merged results to {out}: {exc}") from None
    results: list[Result] = []
    seen: set[tuple[str, str]] = set()
    for data in shards:
        iotests = Path(data.get("qemu", {}).get("source", ".")) / "tests" / "qemu-iotests"
        for record in data["runs"]:
            ident = (f"{record['format']}-{record['protocol']}", record.get("key") or record["test"])
            if ident in seen:
                raise UsageError(f"run {ident[0]} {ident[1]} appears in more than one shard")
            seen.add(ident)
            results.append(_result(record, iotests, out))
    meta = {k: v for k, v in shards[0].items() if k != "runs"}
    meta["merged_from"] = [str(f) for f in inputs]
    meta["complete"] = all(d.get("complete", False) for d in shards)
    meta["planned"] = sum(int(d.get("planned", 0)) for d in shards)
    meta["wall_s"] = max(float(d.get("wall_s", 0.0)) for d in shards)  # shards run side by side
    return results, meta
