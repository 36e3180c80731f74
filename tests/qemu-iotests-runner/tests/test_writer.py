"""report/writer.py: result files written as runs finish; a results folder whose disk fills up mid-run (the
verdicts stay the tests', the result files stay whole)."""

from __future__ import annotations

import errno
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.plan import history
from iotests_run.report import writer
from iotests_run.report.progress import Progress
from iotests_run.results.meta import Meta
from support import FakeTree, result, run_cli, small_tmpfs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (we are root in CI); skipped where mounts are not allowed."""
    with small_tmpfs(tmp_path / "results", "2M") as folder:
        yield folder


def _noisy_tree(tree: FakeTree) -> None:
    """Eight runs: odd ones fail printing 400 KB each (their artifacts alone would fill 2 MB), even ones pass."""
    for i in range(1, 9):
        if i % 2:
            tree.add_test(f"00{i}", f"head -c 300000 /dev/urandom | base64\nsleep 0.{i}\n", out="x\n")
        else:
            tree.add_test(f"00{i}", f"echo fine\nsleep 0.{i}\n", out="fine\n")


def _args(tree: FakeTree, results: Path, tmp_path: Path) -> list[str]:
    return [*tree.args(results), "--history", str(tmp_path / "h.json"), "-j", "4"]


@pytest.mark.process
def test_a_disk_filling_up_keeps_every_verdict_and_every_run_in_the_files(fake_tree: FakeTree, small_disk: Path,
                                                                         tmp_path: Path) -> None:
    _noisy_tree(fake_tree)
    proc = run_cli(_args(fake_tree, small_disk, tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the failures are the tests', nothing else
    assert "Traceback" not in proc.stdout + proc.stderr
    runs = {r["test"]: r for r in json.loads((small_disk / "results.json").read_text())["runs"]}
    assert {k: r["outcome"] for k, r in runs.items()} == {
        f"00{i}": "fail" if i % 2 else "pass" for i in range(1, 9)}
    assert all(r["reason"] == "output mismatch" for k, r in runs.items() if int(k) % 2)
    cases = ET.parse(small_disk / "junit.xml").getroot().iter("testcase")
    assert len(list(cases)) == 8
    assert "8 runs" in (small_disk / "summary.txt").read_text() or "4 passed, 4 failed" in (
        small_disk / "summary.txt").read_text()
    assert (small_disk / "report.html").read_text().rstrip().endswith("</html>")
    # what did not fit is said, and the attachments name only what is there
    assert any("not kept: the results folder's filesystem has" in r["diagnostics"] for r in runs.values())
    for r in runs.values():
        for rel in r["attachments"]:
            assert (small_disk / rel).is_file(), rel


@pytest.mark.process
def test_a_full_disk_at_the_end_is_one_line_exit_2_and_the_files_stay_valid(fake_tree: FakeTree,
                                                                           small_disk: Path, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo fine\n", out="fine\n")
    # 002 fills the results disk to the last byte, the room held back for the result files included
    fake_tree.add_test("002", f"sleep 1.5\nrm -f {small_disk}/.iotests-run.reserve\n"
                       f"cat /dev/zero > {small_disk}/filler 2>/dev/null\necho fine\n", out="fine\n")
    proc = run_cli(_args(fake_tree, small_disk, tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "incomplete" in line]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "results.json" in lines[0]
    data = json.loads((small_disk / "results.json").read_text())  # still whole: the version before the disk filled
    assert [r["test"] for r in data["runs"]] == ["001"] and data["complete"] is False
    ET.parse(small_disk / "junit.xml")
    assert history.recent(tmp_path / "h.json", next(iter(json.loads((tmp_path / "h.json").read_text())["trees"])))


@pytest.mark.process
def test_a_write_that_fails_gives_up_the_held_back_room_once_then_warns_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    released: list[bool] = []
    fail_with = [errno.ENOSPC]

    def write(path: Path, text: str | bytes) -> None:
        calls.append(path.name)
        if fail_with:
            raise OSError(fail_with[0], "No space left on device" if fail_with[0] == errno.ENOSPC else "Read-only")

    def release() -> bool:
        released.append(True)
        fail_with.clear()  # the room held back was enough
        return True

    monkeypatch.setattr(writer, "write_atomically", write)
    shown = io.StringIO()
    run = Run(TestCase("001", tmp_path / "001", frozenset()), "qcow2", "file")
    rep = writer.Reporter(tmp_path, None, Meta(), Progress(1, shown), False, [], release=release)
    rep.record(Result(run, Outcome.PASS))
    assert rep.write_files() == [] and released == [True]
    assert calls == ["results.json", "junit.xml", "results.json", "junit.xml"]
    # a read-only disk: nothing to release, each file's failure said once, the run goes on
    fail_with.append(errno.EROFS)
    rep.release = lambda: False
    assert len(rep.write_files()) == 2 and len(rep.write_files()) == 2
    said = [line for line in shown.getvalue().splitlines() if "cannot write" in line]
    assert len(said) == 2 and all("Read-only" in line for line in said)


@pytest.mark.unit
def test_result_files_follow_finished_runs_within_a_second(tmp_path: Path) -> None:
    """Runs finishing in a burst rewrite the files once, not once each; nothing waits past a tick."""
    import io

    from iotests_run.report.progress import Progress
    from iotests_run.report.writer import WRITE_EVERY_S, Reporter

    now = [10.0]
    reporter = Reporter(tmp_path, None, Meta(complete=False), Progress(9, io.StringIO(), live=False), False, [],
                        clock=lambda: now[0])

    def written() -> list[str]:
        return [r["test"] for r in json.loads((tmp_path / "results.json").read_text())["runs"]]

    reporter.finished(result("001", Outcome.PASS))  # the first one goes at once
    assert written() == ["001"]
    for key in ("002", "003", "004"):
        now[0] += WRITE_EVERY_S / 10
        reporter.finished(result(key, Outcome.PASS))
    assert written() == ["001"]  # the burst waits for the next tick ...
    reporter.tick([])
    assert written() == ["001", "002", "003", "004"]
    assert [c.get("name") for c in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")] == \
        ["001", "002", "003", "004"]
    now[0] += WRITE_EVERY_S / 10
    reporter.finished(result("005", Outcome.PASS))
    assert "005" not in written()
    now[0] += WRITE_EVERY_S
    reporter.finished(result("006", Outcome.PASS))  # ... or for a run that ends a second after the last write
    assert written()[-2:] == ["005", "006"]
    inode = (tmp_path / "results.json").stat().st_ino  # a rewrite replaces the file
    reporter.tick([])  # nothing new: nothing rewritten
    assert (tmp_path / "results.json").stat().st_ino == inode
