"""Failures of the machine, not of the tests: told apart in results and history, one line where they stop us."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotests_run.cli.main import main as cli_main
from iotests_run.errors import SetupError
from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.plan import history
from iotests_run.tree import qemu
from support import FakeTree

pytestmark = pytest.mark.unit


def _run(key: str = "041") -> Run:
    return Run(TestCase(key, Path("/x") / key, frozenset()), "qcow2", "file")


def test_a_runner_or_machine_error_is_not_remembered_as_the_test_failing(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    history.save(path, "t", [Result(_run(), Outcome.ERROR, "runner error: OSError(24, 'Too many open files')",
                                    duration_s=0.5)])
    history.save(path, "t", [Result(_run(), Outcome.FAIL, "output mismatch", duration_s=3.0)])
    past = history.recent(path, "t")["qcow2-file/041"]
    assert past.outcomes == "f" and past.failed == 1  # the error left no letter, and no duration
    assert history.load(path, "t")[0] == {"qcow2-file/041": 3.0}
    assert Outcome.ERROR.is_failure and not Outcome.ERROR.ran_to_its_end


def test_a_history_reached_through_a_link_is_saved_at_its_target(tmp_path: Path) -> None:
    target = tmp_path / "shared" / "durations.json"
    target.parent.mkdir()
    link = tmp_path / "durations.json"
    link.symlink_to(target)
    history.save(link, "t", [Result(_run(), Outcome.PASS, duration_s=2.0)])
    assert link.is_symlink() and history.load(target, "t")[0] == {"qcow2-file/041": 2.0}


def test_strings_from_a_history_are_never_printed_raw(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"trees": {"t": {"used": 1, "durations": {}, "outcomes": {
        "qcow2-file/041": "ff", "qcow2-file/\x1b]0;pwned\x07x": "f"},
        "last_failure": {"qcow2-file/041": "\x1b[2J2026-01-01"}}}}))
    past = history.recent(path, "t")
    assert past["qcow2-file/041"].last_failure is None  # not a stamp save writes
    report = history.flaky_report(past)
    assert "\x1b" not in report and "\x07" not in report and "\\x1b" in report


@pytest.mark.usefixtures("no_home")
def test_no_home_is_one_line_and_only_where_the_cache_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SetupError, match=r"no home folder for the cache .* set HOME, XDG_CACHE_HOME or IOTESTS_RUN"):
        qemu.reference_cache()
    monkeypatch.setenv("IOTESTS_RUN_CACHE", "/somewhere")
    assert qemu.reference_cache() == Path("/somewhere")


@pytest.fixture
def no_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOME unset and no passwd entry for the uid (a bare CI container): pathlib cannot name a home."""
    for name in ("HOME", "XDG_CACHE_HOME", "IOTESTS_RUN_CACHE"):
        monkeypatch.delenv(name, raising=False)

    def nowhere() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(nowhere))


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


@pytest.mark.process
def test_the_default_history_is_not_called_the_history_option(fake_tree: FakeTree, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IOTESTS_RUN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "durations.json").write_text("my notes\n")
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    assert cli_main([*fake_tree.args(tmp_path / "r"), "--list"]) == 2
    err = capsys.readouterr().err
    assert "--history " not in err.replace("--history FILE", "") and "the duration history (the default" in err
    assert (tmp_path / "cache" / "durations.json").read_text() == "my notes\n"
