"""--affected-by and the coverage map against hostile or broken input: hunk headers with absurd numbers,
maps that are bombs or name files outside the tree, binary changes, files with no diff in them, FIFOs
and devices where a file is expected, a map that cannot be saved. Each is one line and exit 2 (or a
warning), never a traceback, a hang or an exhausted memory; and never fewer runs than the README's rules."""

from __future__ import annotations

import base64
import errno
import gzip
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotests_run.affected import coverage_map, gcov
from iotests_run.affected.coverage_map import CoverageMap, Recorder, Span, load, save, save_recording, source_digest
from iotests_run.affected.gcov import GcovError
from iotests_run.affected.selection import (
    Affected,
    ChangeOptions,
    ChangeSelection,
    FileChange,
    Hunk,
    affected,
    choose_runs,
    parse_diff,
    read_diff,
    stale_files,
)
from iotests_run.errors import UsageError
from iotests_run.model import Run
from iotests_run.tree.discovery import Catalog, discover
from support import FakeTree, run_cli

TREE = "QEMU 7.2.0 tests:x"
FAKE_C = "int alpha(void)\n{\n    return 1;\n}\n"


@pytest.fixture
def no_hang() -> Iterator[None]:
    """A read that blocks (a FIFO opened without O_NONBLOCK) fails the test instead of hanging it."""
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError("blocked on a read")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _catalog(fake_tree: FakeTree) -> Catalog:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fake_tree.add_test("002", "echo ok\n", out="ok\n")
    return discover(fake_tree.iotests)


def _map_json(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": coverage_map.FORMAT, "tree": TREE, "created": "2026-01-01T00:00:00Z",
        "files": {"block/qcow2.c": [["alpha", 10, 14], ["beta", 20, 35]]}, "digests": {},
        "runs": {"qcow2-file/001": base64.b64encode(bytes([0b01])).decode(),
                 "qcow2-file/002": base64.b64encode(bytes([0b10])).decode()},
        "uncounted": []}
    data.update(over)
    return data


def _write_map(path: Path, data: Any) -> Path:
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    return path


def _cmap() -> CoverageMap:
    files = {"block/qcow2.c": [Span("alpha", 10, 14), Span("beta", 20, 35)]}
    return CoverageMap(TREE, "2026-01-01T00:00:00Z", files, {}, {"qcow2-file/001": frozenset({0}),
                                                               "qcow2-file/002": frozenset({1})})


def _runs(catalog: Catalog) -> list[Run]:
    return [Run(catalog.tests[k], "qcow2", "file") for k in ("001", "002")]


def _one_file(hunk_header: str, path: str = "block/qcow2.c") -> str:
    return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n{hunk_header}\n-x\n+y\n"


# --- H1, M4: hunk headers' numbers ---------------------------------------------------------------------------

@pytest.mark.unit
def test_a_hunk_claiming_two_billion_lines_is_a_range_not_a_set(fake_tree: FakeTree) -> None:
    catalog = _catalog(fake_tree)
    (change,) = parse_diff(_one_file("@@ -20,2000000000 +20 @@"))
    assert change.hunks == [Hunk(20, 2_000_000_000)]
    # it reaches far beyond beta: everything, decided without a set of two billion lines
    result = affected([change], _cmap(), catalog)
    assert result.everything and "block/qcow2.c:20 changed outside any function" in result.everything
    # and one wholly inside a function as long: that function only
    wide = CoverageMap(TREE, "2026", {"block/qcow2.c": [Span("huge", 1, 3_000_000_000), Span("next", 3_000_000_001,
                                                                                             4_000_000_000)]}, {},
                       {"qcow2-file/001": frozenset({1})})
    inside = affected([FileChange("block/qcow2.c", "block/qcow2.c", [Hunk(5, 2_000_000_000)])], wide, catalog)
    assert inside.everything is None and inside.functions == frozenset({0})
    across = affected([FileChange("block/qcow2.c", "block/qcow2.c", [Hunk(2_000_000_000, 2_000_000_000)])], wide,
                      catalog)
    assert across.everything is None and across.functions == frozenset({0, 1})  # two adjacent spans hold it


@pytest.mark.unit
def test_a_huge_hunk_with_fallback_selects_every_run(fake_tree: FakeTree, tmp_path: Path) -> None:
    catalog = _catalog(fake_tree)
    cmap = _write_map(tmp_path / "map.json.gz", _map_json())
    patch = tmp_path / "p.patch"
    patch.write_text(_one_file("@@ -20,2000000000 +20 @@"))
    warned: list[str] = []
    options = ChangeOptions(None, patch, cmap, fallback=True)
    chosen = choose_runs(_runs(catalog), fake_tree.source, catalog, TREE, options, warned.append)
    assert len(chosen.kept) == 2 and "2 of 2 runs affected" in chosen.line and "changed outside" in chosen.line
    assert not warned


@pytest.mark.unit
@pytest.mark.parametrize("number", ["9" * 5000, "3000000000", "2147483649"])
def test_a_hunk_number_beyond_two_to_the_31_is_a_usage_error_naming_the_diff(number: str) -> None:
    for header in (f"@@ -{number},3 +20 @@", f"@@ -20,{number} +20 @@", f"@@ -20,3 +{number},1 @@",
                   f"@@ -20,3 +20,{number} @@"):
        with pytest.raises(UsageError) as caught:
            parse_diff(_one_file(header), "series.patch")
        message = str(caught.value)
        assert message.startswith("series.patch: line 4: a hunk header's line number beyond 2147483648"), message
        assert len(message) < 200 and "\n" not in message
    assert parse_diff(_one_file("@@ -2147483648,1 +1 @@"))[0].hunks == [Hunk(2_147_483_648, 1)]


@pytest.mark.unit
def test_a_hunk_counting_too_many_lines_swallows_no_later_file(fake_tree: FakeTree) -> None:
    text = _one_file("@@ -11,900 +11,900 @@") + _one_file("@@ -1 +1 @@", "meson.build")
    changes = {c.path: c for c in parse_diff(text)}
    assert sorted(changes) == ["block/qcow2.c", "meson.build"] and changes["meson.build"].hunks == [Hunk(1, 1)]
    later_first = _one_file("@@ -1 +1 @@", "meson.build") + _one_file("@@ -12 +12 @@")
    assert "meson.build changed" in (affected(parse_diff(later_first), _cmap(), _catalog(fake_tree)).everything or "")


@pytest.mark.process
def test_a_5000_digit_hunk_header_is_one_line_and_exit_2(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    cmap = _write_map(tmp_path / "map.json.gz", _map_json())
    patch = tmp_path / "p.patch"
    patch.write_text(_one_file(f"@@ -{'9' * 5000},3 +20 @@"))
    proc = run_cli(["--list", "--affected-by-diff", str(patch), "--coverage-map", str(cmap),
                    *fake_tree.args(tmp_path / "r")])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"{patch}: line 4: a hunk header's line number beyond" in proc.stderr


# --- H2: the map's file names ---------------------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("key", ["/etc/passwd", "../outside.c", "block/../../outside.c", "", "a\0b"])
def test_a_map_naming_a_file_outside_the_tree_is_refused(tmp_path: Path, key: str) -> None:
    for data in (_map_json(digests={key: "0123456789abcdef"}), _map_json(files={key: [["f", 1, 2]]})):
        with pytest.raises(UsageError) as caught:
            load(_write_map(tmp_path / "map.json.gz", data))
        assert "is not a coverage map" in str(caught.value) or "not a path inside its folder" in str(caught.value)
        assert "\n" not in str(caught.value)


@pytest.mark.unit
def test_a_mapped_name_that_is_a_fifo_or_a_link_is_stale_and_never_read(tmp_path: Path, no_hang: None) -> None:
    source = tmp_path / "src"
    (source / "block").mkdir(parents=True)
    (source / "block" / "qcow2.c").write_text(FAKE_C)
    os.mkfifo(source / "block" / "fifo.c")
    (tmp_path / "secret.c").write_text(FAKE_C)
    (source / "block" / "link.c").symlink_to(tmp_path / "secret.c")
    (source / "dirlink").symlink_to(tmp_path)
    digest = source_digest(FAKE_C.encode())
    cmap = CoverageMap(TREE, "2026", {}, {"block/qcow2.c": digest, "block/fifo.c": digest, "block/link.c": digest,
                                          "dirlink/secret.c": digest, "block/gone.c": digest}, {})
    assert stale_files(cmap, source, [], None) == ["block/fifo.c", "block/gone.c", "block/link.c", "dirlink/secret.c"]


# --- H3: an empty REV -------------------------------------------------------------------------------------------

@pytest.mark.process
def test_an_empty_affected_by_is_a_usage_error_and_leaves_the_map_alone(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    cmap = _write_map(tmp_path / "map.json.gz", _map_json())
    before = cmap.read_bytes()
    for extra in ([], ["--affected-by-fallback"]):
        proc = run_cli(["--coverage-map", str(cmap), "--affected-by", "", *extra, *fake_tree.args(tmp_path / "r")])
        assert proc.returncode == 2 and "--affected-by: an empty revision" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1
    assert cmap.read_bytes() == before and not (tmp_path / "r").exists()


# --- M3: maps too big, numbers out of bounds ------------------------------------------------------------------

def _refused(path: Path, words: str) -> None:
    with pytest.raises(UsageError) as caught:
        load(path)
    message = str(caught.value)
    assert words in message and "\n" not in message and len(message) < 300, message


@pytest.mark.unit
def test_a_gzip_bomb_of_a_map_stops_at_the_cap(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.json.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        chunk = b" " * (1 << 20)
        for _ in range((coverage_map.MAX_INFLATED >> 20) + 2):
            f.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    _refused(bomb, "inflates to more than 64 MB")
    big = tmp_path / "big.json.gz"
    with big.open("wb") as f:
        f.truncate(coverage_map.MAX_BYTES + 1)
    _refused(big, "is larger than 32 MB")


@pytest.mark.unit
@pytest.mark.parametrize(("over", "words"), [
    ({"files": {"block/qcow2.c": [["alpha", 1, 10 ** 15]]}}, "end line of alpha: 1000000000000000 is not an int"),
    ({"files": {"block/qcow2.c": [["alpha", 1, 1e15]]}}, "is not an integer"),
    ({"files": {"block/qcow2.c": [["alpha", -1, 5]]}}, "start line of alpha"),
    ({"files": {"block/qcow2.c": [["alpha", 9, 5]]}}, "end line of alpha"),
    ({"files": {"block/qcow2.c": [["alpha", True, 5]]}}, "start line of alpha"),
    ({"files": {"block/qcow2.c": [["alpha", 1]]}}, "is not [name, start, end]"),
    ({"files": {"block/qcow2.c": {"alpha": 1}}}, "are not a list"),
    ({"files": []}, "field 'files' is not a dict"),
    ({"runs": {"qcow2-file/001": base64.b64encode(b"\xff").decode()}}, "a bit beyond the map's 2 functions"),
    ({"runs": {"qcow2-file/001": base64.b64encode(b"\xff" * (1 << 20)).decode()}}, "not a bitset of the map's 2"),
    ({"runs": {"qcow2-file/001": "!!!!"}}, "not base64"),
    ({"runs": {"qcow2-file/001": 7}}, "not a bitset"),
    ({"uncounted": [2]}, "uncounted function: 2 is not an integer from 0 to 1"),
    ({"uncounted": [10 ** 100]}, "uncounted function: a huge integer"),
    ({"uncounted": list(range(3))}, "field 'uncounted' is not a list"),
    ({"digests": {"block/qcow2.c": ["x"]}}, "is not a short string"),
    ({"created": {"a": 1}}, "field 'created' is not a str"),
    ({"tree": None}, "field 'tree' is not a str"),
])
def test_a_map_with_numbers_out_of_bounds_is_one_line(tmp_path: Path, over: dict[str, Any], words: str) -> None:
    _refused(_write_map(tmp_path / "map.json.gz", _map_json(**over)), words)


@pytest.mark.unit
def test_a_map_of_too_many_functions_is_refused_before_they_are_built(tmp_path: Path) -> None:
    spans = [["f", 1, 1]] * (coverage_map.MAX_FUNCTIONS + 1)
    _refused(_write_map(tmp_path / "map.json.gz", _map_json(files={"a.c": spans}, runs={})),
             f"more than {coverage_map.MAX_FUNCTIONS} functions")


@pytest.mark.unit
def test_a_good_map_still_loads(tmp_path: Path) -> None:
    cmap = load(_write_map(tmp_path / "map.json.gz", _map_json(uncounted=[1])))
    assert cmap.runs == {"qcow2-file/001": frozenset({0}), "qcow2-file/002": frozenset({1})}
    assert cmap.uncounted == frozenset({1}) and cmap.files["block/qcow2.c"][1] == Span("beta", 20, 35)
    save(tmp_path / "again.json.gz", cmap)
    assert load(tmp_path / "again.json.gz") == cmap


# --- M5: binary changes ---------------------------------------------------------------------------------------

GIT_BINARY = """\
diff --git a/block/qcow2.c b/block/qcow2.c
index 1111111..2222222 100644
GIT binary patch
literal 12
TcmZ?wbaPF}O

literal 10
RcmZ?wbaPF}O
"""


@pytest.mark.unit
@pytest.mark.parametrize("text", [
    GIT_BINARY,
    "diff --git a/block/qcow2.c b/block/qcow2.c\nindex 1111111..2222222 100644\n"
    "Binary files a/block/qcow2.c and b/block/qcow2.c differ\n",
    "Binary files a/block/qcow2.c and b/block/qcow2.c differ\n",
])
def test_a_binary_change_to_a_mapped_file_selects_every_run(fake_tree: FakeTree, text: str) -> None:
    catalog = _catalog(fake_tree)
    (change,) = parse_diff(text)
    assert change.path == "block/qcow2.c" and change.binary and not change.hunks
    result = affected([change], _cmap(), catalog)
    assert result.everything == "block/qcow2.c changed as binary data, which the coverage map cannot place"
    assert all(result.why(run, _cmap(), _cmap().table()) for run in _runs(catalog))


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@invalid", *args], cwd=cwd, check=True,
                   capture_output=True)


def _git_tree(fake_tree: FakeTree, tmp_path: Path) -> tuple[Path, list[str]]:
    """The fake tree in git with a mapped block/fake.c (alpha: lines 1-4) that 001 executed."""
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fake_tree.add_test("002", "echo ok\n", out="ok\n")
    (fake_tree.source / "block").mkdir()
    (fake_tree.source / "block" / "fake.c").write_text(FAKE_C)
    cmap = _write_map(tmp_path / "map.json.gz", _map_json(
        files={"block/fake.c": [["alpha", 1, 4]]}, digests={"block/fake.c": source_digest(FAKE_C.encode())},
        runs={"qcow2-file/001": base64.b64encode(b"\x01").decode(), "qcow2-file/002": ""}))
    _git(fake_tree.source, "init", "-q")
    _git(fake_tree.source, "add", "-A")
    _git(fake_tree.source, "commit", "-qm", "base")
    return cmap, ["--list", "--coverage-map", str(cmap), *fake_tree.args(tmp_path / "r")]


@pytest.mark.process
def test_git_saying_binary_files_differ_selects_every_run(fake_tree: FakeTree, tmp_path: Path) -> None:
    _cmap_file, args = _git_tree(fake_tree, tmp_path)
    proc = run_cli(["--affected-by", "HEAD", *args])
    assert proc.returncode == 0 and "0 of 2 runs affected by git diff HEAD" in proc.stderr, proc.stderr  # no change
    (fake_tree.source / "block" / "fake.c").write_bytes(FAKE_C.encode() + b"\0\x01binary\0")
    proc = run_cli(["--affected-by", "HEAD", *args])
    assert proc.returncode == 0 and "2 of 2 runs affected by git diff HEAD" in proc.stderr, proc.stderr
    assert "changed as binary data" in proc.stdout


# --- M6: a diff file without a diff ---------------------------------------------------------------------------

@pytest.mark.process
@pytest.mark.parametrize("content", [b"", b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n",
                                     b"Subject: [PATCH 0/3] cover letter\n\nno patch here\n"])
def test_a_diff_file_with_no_diff_is_one_line_and_exit_2(fake_tree: FakeTree, tmp_path: Path,
                                                          content: bytes) -> None:
    _cmap_file, args = _git_tree(fake_tree, tmp_path)
    page = tmp_path / "series.patch"
    page.write_bytes(content)
    proc = run_cli(["--affected-by-diff", str(page), *args])
    assert proc.returncode == 2 and f"--affected-by-diff {page}: no diff in it" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


# --- M7: recording a map that cannot be saved ----------------------------------------------------------------

@pytest.mark.unit
def test_a_map_that_cannot_be_saved_is_a_warning_and_the_old_map_stays_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "build").mkdir()
    target = _write_map(tmp_path / "map.json.gz", _map_json())
    before = target.read_bytes()
    real = tempfile.mkstemp

    def on_a_full_disk(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name  # every write: ENOSPC

    monkeypatch.setattr("iotests_run.files.tempfile.mkstemp", on_a_full_disk)
    recorder = Recorder(tmp_path / "src", tmp_path / "build")
    closed: list[bool] = []
    monkeypatch.setattr(recorder, "close", lambda: closed.append(True))
    notes: list[str] = []
    save_recording(target, recorder, TREE, [], notes.append)
    assert notes == [f"iotests-run: warning: the coverage map {target} was not saved "
                     f"({os.strerror(errno.ENOSPC)})"]
    assert closed == [True] and target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "map.json.gz"]  # no temporary file left


@pytest.mark.process
def test_recording_into_a_map_with_a_bit_out_of_range_is_refused_before_the_runs(fake_tree: FakeTree,
                                                                                 tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    cmap = _write_map(tmp_path / "map.json.gz",
                      _map_json(runs={"qcow2-file/001": base64.b64encode(b"\x80").decode()}))
    proc = run_cli(["--coverage-map", str(cmap), *fake_tree.args(tmp_path / "r")])
    assert proc.returncode == 2 and "a bit beyond the map's 2 functions" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "r").exists()


# --- L5: the map's own strings --------------------------------------------------------------------------------

@pytest.mark.unit
def test_a_maps_created_field_is_printed_escaped(tmp_path: Path, fake_tree: FakeTree) -> None:
    created = "\x1b[2J\x1b]0;x\x07\n2026"
    cmap = load(_write_map(tmp_path / "map.json.gz", _map_json(created=created)))
    reason = ChangeSelection(Affected(None, frozenset(), {}), cmap, "x").reason
    assert reason == "not affected by the change (coverage map of \\x1b[2J\\x1b]0;x\\x07)"
    source = fake_tree.source
    (source / "block").mkdir()
    (source / "block" / "qcow2.c").write_text(FAKE_C)
    stale = _write_map(tmp_path / "stale.json.gz", _map_json(created=created, digests={"block/other.c": "0" * 16}))
    patch = tmp_path / "p.patch"
    patch.write_text(_one_file("@@ -12 +12 @@"))
    with pytest.raises(UsageError) as caught:
        choose_runs([], source, _catalog(fake_tree), TREE, ChangeOptions(None, patch, stale), print)
    assert "(\\x1b[2J\\x1b]0;x\\x07\\n2026) is older than" in str(caught.value)
    assert not any(c in str(caught.value) for c in "\x1b\x07\n")


# --- L8: FIFOs and devices where files are read ---------------------------------------------------------------

@pytest.mark.unit
def test_fifos_and_devices_are_refused_unread(tmp_path: Path, no_hang: None) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(UsageError, match="--affected-by-diff: not a regular file"):
            read_diff(path)
        with pytest.raises(UsageError, match="coverage map: not a regular file"):
            load(path)
        with pytest.raises(GcovError, match="not a regular file"):
            gcov.read_counts(path)
        with pytest.raises(GcovError, match="not a regular file"):
            gcov.read_notes(path)
    # counters a test replaced by a link are not followed
    (tmp_path / "real.gcda").write_bytes(b"")
    (tmp_path / "link.gcda").symlink_to(tmp_path / "real.gcda")
    with pytest.raises(GcovError, match="a symbolic link"):
        gcov.read_counts(tmp_path / "link.gcda")


@pytest.mark.process
def test_a_fifo_as_diff_or_map_is_one_line_and_exit_2(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cmap = _write_map(tmp_path / "map.json.gz", _map_json())
    for extra in (["--affected-by-diff", str(fifo), "--coverage-map", str(cmap)],
                  ["--affected-by-diff", "/dev/zero", "--coverage-map", str(cmap)],
                  ["--affected-by-diff", str(cmap), "--coverage-map", str(fifo)],
                  ["--coverage-map", str(fifo)],
                  ["--coverage-map", "/dev/zero"]):
        proc = run_cli([*extra, *fake_tree.args(tmp_path / "r")], timeout=60)
        assert proc.returncode == 2 and "not a regular file" in proc.stderr, (extra, proc.stderr)
        assert proc.stderr.count("\n") == 1
