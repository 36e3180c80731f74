"""tools/bugtrees.py: bug.json checked field by field; the tree's key follows the patches."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from iotests_run.errors import UsageError
from support import REPO

sys.path.insert(0, str(REPO / "tools"))
from iotests_tools import bugtrees

pytestmark = pytest.mark.unit

GOOD = {"version": "7.2", "test": "001", "format": "qcow2", "kind": "hang", "expect": "in_flight 1",
        "env": {"IOTESTS_BUG_X": "1"}, "note": "n"}


def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "x", patch: str = "--- a\n",
         **fields: Any) -> Path:
    monkeypatch.setattr(bugtrees, "BUGS_D", tmp_path)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "bug.json").write_text(json.dumps({**GOOD, **fields}))
    (folder / f"{fields.get('version', '7.2')}.patch").write_text(patch)
    return folder


def test_a_good_bug_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path, monkeypatch)
    (bug,) = bugtrees.bugs()
    assert (bug.name, bug.version, bug.test, bug.env) == ("x", "7.2", "001", {"IOTESTS_BUG_X": "1"})
    assert bugtrees.bugs("10.0") == []


@pytest.mark.parametrize(("fields", "message"), [
    ({"version": "9.9"}, "version must be one of"),
    ({"kind": "slow"}, "kind one of"),
    ({"expect": "("}, "not a regular expression"),
    ({"env": {"PATH": "/x"}}, "IOTESTS_BUG_"),
    ({"test": ""}, "needs a string 'test'"),
])
def test_a_bad_bug_json_is_one_line_naming_the_bug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   fields: dict[str, Any], message: str) -> None:
    make(tmp_path, monkeypatch, **fields)
    with pytest.raises(UsageError, match=message) as raised:
        bugtrees.bugs()
    assert "bug x" in str(raised.value) and "\n" not in str(raised.value)


def test_a_bug_without_its_patch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (make(tmp_path, monkeypatch) / "7.2.patch").unlink()
    with pytest.raises(UsageError, match=r"no 7\.2\.patch"):
        bugtrees.bugs()


def test_the_tree_key_changes_with_a_patch_and_the_configure_line(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make(tmp_path, monkeypatch)
    first = bugtrees.digest("7.2", ["--a"])
    assert bugtrees.digest("7.2", ["--a"]) == first
    assert bugtrees.digest("7.2", ["--b"]) != first
    assert bugtrees.digest("10.0", ["--a"]) != first
    (folder / "7.2.patch").write_text("--- b\n")
    assert bugtrees.digest("7.2", ["--a"]) != first


def test_the_shipped_bugs_are_well_formed() -> None:
    shipped = bugtrees.bugs()
    assert {b.kind for b in shipped} >= {"hang"}
    assert all("getenv" in b.patch.read_text() for b in shipped)
