"""End to end: each injected hang bug (tools/bugs.d, kind "hang") run on its bug tree; the explanation's first
line names the cause (bug.json's "expect")."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from support import REPO

pytestmark = pytest.mark.e2e

sys.path.insert(0, str(REPO / "tools"))
from iotests_tools import bugtrees  # noqa: E402

HANGS = [b for b in bugtrees.bugs() if b.kind == "hang"]


@pytest.mark.parametrize("bug", HANGS, ids=[b.name for b in HANGS])
def test_the_explanation_names_the_cause(bug: bugtrees.Bug, tmp_path: Path) -> None:
    if os.environ.get("IOTESTS_RUN_SKIP_E2E"):
        pytest.skip("IOTESTS_RUN_SKIP_E2E is set")
    got = bugtrees.run_bug(bug, tmp_path / bug.name)
    assert got.outcome in ("hang", "timeout"), f"{bug.name}: {got.outcome}: {got.reason}"
    assert got.named, f"{bug.name}: explanation {got.explanation!r} does not match {bug.expect!r}"


def test_every_bug_json_is_well_formed_and_its_patch_applies_to_the_reference_sources() -> None:
    """The convention holds for every bug (C's and S's too): a parse error is a one-line UsageError."""
    for bug in bugtrees.bugs():
        assert bug.patch.is_file()
        assert all(name.startswith("IOTESTS_BUG_") for name in bug.env)
        assert "getenv" in bug.patch.read_text(), f"{bug.name}: its patch must be dormant unless its variable is set"
