"""tree/qemu.py: the reference tree's cache when there is no home folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotests_run.cli.main import main as cli_main
from iotests_run.errors import SetupError
from iotests_run.tree import qemu
from support import FakeTree

pytestmark = pytest.mark.unit


@pytest.mark.usefixtures("no_home")
def test_no_home_is_one_line_and_only_where_the_cache_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SetupError, match=r"no home folder for the cache .* set HOME, XDG_CACHE_HOME or IOTESTS_RUN"):
        qemu.reference_cache()
    monkeypatch.setenv("IOTESTS_RUN_CACHE", "/somewhere")
    assert qemu.reference_cache() == Path("/somewhere")


@pytest.mark.process
@pytest.mark.usefixtures("no_home")
def test_list_without_home_works_when_files_are_named_and_says_what_to_set_otherwise(
        fake_tree: FakeTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    assert cli_main([*fake_tree.args(tmp_path / "r"), "--list", "--history", str(tmp_path / "h.json")]) == 0
    assert "001" in capsys.readouterr().out
    assert cli_main([*fake_tree.args(tmp_path / "r"), "--list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("iotests-run: no home folder for the cache")
