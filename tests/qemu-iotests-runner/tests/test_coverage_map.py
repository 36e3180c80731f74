"""affected/coverage_map.py: maps loaded, checked, saved and recorded into, whatever file they are given."""

from __future__ import annotations

import base64
import errno
import gzip
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from iotests_run.affected import coverage_map
from iotests_run.affected.coverage_map import CoverageMap, Span, load, save, source_digest
from iotests_run.affected.recorder import Recorder, save_recording
from iotests_run.affected.selection import Affected, ChangeOptions, ChangeSelection, choose_runs, stale_files
from iotests_run.errors import UsageError
from support import ALPHA_C, MAP_TREE, FakeTree, catalog_of_two, map_json, one_file_diff, run_cli, write_map


@pytest.mark.unit
@pytest.mark.parametrize("key", ["/etc/passwd", "../outside.c", "block/../../outside.c", "", "a\0b"])
def test_a_map_naming_a_file_outside_the_tree_is_refused(tmp_path: Path, key: str) -> None:
    for data in (map_json(digests={key: "0123456789abcdef"}), map_json(files={key: [["f", 1, 2]]})):
        with pytest.raises(UsageError) as caught:
            load(write_map(tmp_path / "map.json.gz", data))
        assert "is not a coverage map" in str(caught.value) or "not a path inside its folder" in str(caught.value)
        assert "\n" not in str(caught.value)


@pytest.mark.unit
def test_a_mapped_name_that_is_no_regular_file_is_stale_and_never_read(tmp_path: Path, no_hang: None) -> None:
    """A FIFO, a device, a missing file: stale, never waited on. The tree's own links are followed (a CI
    checkout can be a tree of links to the sources): to a regular file, read like one."""
    source = tmp_path / "src"
    (source / "block").mkdir(parents=True)
    (source / "block" / "qcow2.c").write_text(ALPHA_C)
    os.mkfifo(source / "block" / "fifo.c")
    (tmp_path / "secret.c").write_text(ALPHA_C)
    (source / "block" / "link.c").symlink_to(tmp_path / "secret.c")
    (source / "dirlink").symlink_to(tmp_path)
    (source / "block" / "zero.c").symlink_to("/dev/zero")
    digest = source_digest(ALPHA_C.encode())
    cmap = CoverageMap(MAP_TREE, "2026", {}, {"block/qcow2.c": digest, "block/fifo.c": digest, "block/link.c": digest,
                                          "dirlink/secret.c": digest, "block/gone.c": digest, "block/zero.c": digest},
                       {})
    assert stale_files(cmap, source, [], None) == ["block/fifo.c", "block/gone.c", "block/zero.c"]


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
    _refused(write_map(tmp_path / "map.json.gz", map_json(**over)), words)


@pytest.mark.unit
def test_a_map_of_too_many_functions_is_refused_before_they_are_built(tmp_path: Path) -> None:
    spans = [["f", 1, 1]] * (coverage_map.MAX_FUNCTIONS + 1)
    _refused(write_map(tmp_path / "map.json.gz", map_json(files={"a.c": spans}, runs={})),
             f"more than {coverage_map.MAX_FUNCTIONS} functions")


@pytest.mark.unit
def test_a_good_map_still_loads(tmp_path: Path) -> None:
    cmap = load(write_map(tmp_path / "map.json.gz", map_json(uncounted=[1])))
    assert cmap.runs == {"qcow2-file/001": frozenset({0}), "qcow2-file/002": frozenset({1})}
    assert cmap.uncounted == frozenset({1}) and cmap.files["block/qcow2.c"][1] == Span("beta", 20, 35)
    save(tmp_path / "again.json.gz", cmap)
    assert load(tmp_path / "again.json.gz") == cmap


@pytest.mark.unit
def test_a_map_that_cannot_be_saved_is_a_warning_and_the_old_map_stays_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "build").mkdir()
    target = write_map(tmp_path / "map.json.gz", map_json())
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
    save_recording(target, recorder, MAP_TREE, [], notes.append)
    assert notes == [f"iotests-run: warning: the coverage map {target} was not saved "
                     f"({os.strerror(errno.ENOSPC)})"]
    assert closed == [True] and target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "map.json.gz"]  # no temporary file left


@pytest.mark.process
def test_recording_into_a_map_with_a_bit_out_of_range_is_refused_before_the_runs(fake_tree: FakeTree,
                                                                                 tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    cmap = write_map(tmp_path / "map.json.gz",
                      map_json(runs={"qcow2-file/001": base64.b64encode(b"\x80").decode()}))
    proc = run_cli(["--coverage-map", str(cmap), *fake_tree.args(tmp_path / "r")])
    assert proc.returncode == 2 and "a bit beyond the map's 2 functions" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "r").exists()


@pytest.mark.unit
def test_a_maps_created_field_is_printed_escaped(tmp_path: Path, fake_tree: FakeTree) -> None:
    created = "\x1b[2J\x1b]0;x\x07\n2026"
    cmap = load(write_map(tmp_path / "map.json.gz", map_json(created=created)))
    reason = ChangeSelection(Affected(None, frozenset(), {}), cmap, "x").reason
    assert reason == "not affected by the change (coverage map of \\x1b[2J\\x1b]0;x\\x07)"
    source = fake_tree.source
    (source / "block").mkdir()
    (source / "block" / "qcow2.c").write_text(ALPHA_C)
    stale = write_map(tmp_path / "stale.json.gz", map_json(created=created, digests={"block/other.c": "0" * 16}))
    patch = tmp_path / "p.patch"
    patch.write_text(one_file_diff("@@ -12 +12 @@"))
    with pytest.raises(UsageError) as caught:
        choose_runs([], source, catalog_of_two(fake_tree), MAP_TREE, ChangeOptions(None, patch, stale), print)
    assert "(\\x1b[2J\\x1b]0;x\\x07\\n2026) is older than" in str(caught.value)
    assert not any(c in str(caught.value) for c in "\x1b\x07\n")
