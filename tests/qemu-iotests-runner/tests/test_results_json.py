"""report/results_json.py: the contract of results.json."""

from __future__ import annotations

import json

import pytest

from iotests_run.report.results_json import results_json
from support import RESULTS

pytestmark = pytest.mark.unit


def test_results_json_contract() -> None:
    data = json.loads(results_json(RESULTS, {"complete": True}))
    assert data["complete"] is True and data["schema"] == 3
    run = next(r for r in data["runs"] if r["test"] == "002")
    assert run == {"test": "002", "format": "qcow2", "protocol": "file", "outcome": "fail",
                   "reason": "output mismatch", "duration_s": 2.0, "cpu_s": None, "artifacts": "runs/qcow2-file/002",
                   "leaked": [], "key": "002", "diagnostics": "", "attachments": [], "quarantined": False,
                   "casenotrun": "", "copy": 0, "recent": "", "started_s": None, "shard": 0, "explanation": ""}
    assert {r["outcome"] for r in data["runs"]} == {"pass", "fail", "not-run", "interrupted"}
