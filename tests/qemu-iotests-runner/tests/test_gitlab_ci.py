"""The GitLab CI template: valid YAML, the report published whatever happens, real options only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from iotests_run.options import make_parser

pytestmark = pytest.mark.unit

TEMPLATE = Path(__file__).resolve().parents[3] / "tools" / "gitlab-ci" / "iotests.yml"


def test_template_publishes_junit_always_and_shards() -> None:
    doc = yaml.safe_load(TEMPLATE.read_text())
    job = doc[".iotests-run"]
    assert job["artifacts"]["when"] == "always"
    assert job["artifacts"]["reports"]["junit"] == "iotests-results/junit.xml"
    assert "iotests-results/" in job["artifacts"]["paths"]
    # expose_as links the first path in the merge request; GitLab allows no globs there
    assert job["artifacts"]["expose_as"] and job["artifacts"]["paths"][0] == "iotests-results/report.html"
    assert not any("*" in p for p in job["artifacts"]["paths"])
    assert job["parallel"] >= 2
    assert ".iotests-run-durations.json" in job["cache"]["paths"]
    assert doc["iotests-qcow2"]["extends"] == ".iotests-run"


def test_template_uses_only_options_the_runner_has() -> None:
    doc = yaml.safe_load(TEMPLATE.read_text())
    script = " ".join(doc[".iotests-run"]["script"]) + " " + doc[".iotests-run"]["variables"]["IOTESTS_ARGS"]
    known = {opt for action in make_parser()._actions for opt in action.option_strings}
    used = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", script.split("iotests_run", 1)[1]))
    assert used and used <= known, used - known
