"""inputs.py: the one way files from users, caches and shards come in (kinds, links, caps, numbers)."""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path

import pytest

from iotests_run.errors import UsageError
from iotests_run.inputs import gunzip, number, open_beneath, parse_json, read_beneath, read_bytes, read_optional

pytestmark = pytest.mark.unit


def test_only_regular_files_are_read_and_a_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = threading.Event()

    def attempt() -> None:
        with pytest.raises(UsageError, match="not a regular file"):
            read_bytes(fifo, "--thing", 100)
        done.set()

    threading.Thread(target=attempt, daemon=True).start()
    assert done.wait(5), "reading a FIFO blocked"
    with pytest.raises(UsageError, match="not a regular file"):
        read_bytes(Path("/dev/zero"), "--thing", 100)
    with pytest.raises(UsageError, match="not a regular file"):
        read_bytes(tmp_path, "--thing", 100)
    assert read_optional(fifo, 100) is None and read_optional(Path("/dev/zero"), 100) is None


def test_size_is_capped_before_reading_and_errors_name_the_file(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(UsageError, match=r"^--thing: .*big is larger than 100 bytes$"):
        read_bytes(big, "--thing", 100)
    assert read_bytes(big, "--thing", 101) == b"x" * 101
    with pytest.raises(UsageError, match=r"^--thing: no such file: .*absent$"):
        read_bytes(tmp_path / "absent", "--thing", 100)


def test_links_are_refused_where_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("secret")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_bytes(tmp_path / "link", "x", 100) == b"secret"
    with pytest.raises(UsageError, match="symbolic link"):
        read_bytes(tmp_path / "link", "x", 100, follow_links=False)


def test_beneath_follows_no_link_at_any_component_and_never_leaves_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "runs" / "a").mkdir(parents=True)
    outside.mkdir()
    (outside / "key").write_text("private")
    (root / "runs" / "a" / "diff.txt").write_text("ok")
    (root / "runs" / "dirlink").symlink_to(outside)
    assert read_beneath(root, "runs/a/diff.txt", "merge", 100) == b"ok"
    for rel in ("runs/dirlink/key", "../outside/key", str(outside / "key"), "runs/../../outside/key"):
        with pytest.raises(UsageError):
            read_beneath(root, rel, "merge", 100)
    fd = open_beneath(root, "runs/a", "merge", directory=True)
    os.close(fd)
    with pytest.raises(UsageError, match="not a regular file"):
        open_beneath(root, "runs/a", "merge")


def test_gunzip_stops_at_the_cap_and_refuses_truncated_streams(tmp_path: Path) -> None:
    bomb = gzip.compress(b"\0" * (8 << 20))
    assert len(bomb) < 64 << 10
    with pytest.raises(UsageError, match="inflates to more than 1 MB"):
        gunzip(bomb, "--coverage-map", "m.gz", 1 << 20)
    assert gunzip(bomb, "--coverage-map", "m.gz", 8 << 20) == b"\0" * (8 << 20)
    with pytest.raises(UsageError, match="truncated"):
        gunzip(bomb[: len(bomb) // 2], "--coverage-map", "m.gz", 8 << 20)
    with pytest.raises(UsageError, match="not gzip data"):
        gunzip(b"<html>error</html>", "--coverage-map", "m.gz", 1 << 20)


def test_numbers_are_bounded_before_use() -> None:
    assert number(3, "d", 0, 10) == 3.0
    assert number(7, "n", 0, 10, integer=True) == 7
    for bad in (1e300, float("inf"), float("nan"), -1, "5", True, None, 10**5000):
        with pytest.raises(UsageError, match="is not a number from 0 to 1e"):
            number(bad, "duration_s", 0, 1e6)
    with pytest.raises(UsageError, match="is not an integer"):
        number(2.5, "n", 0, 10, integer=True)
    with pytest.raises(UsageError, match="not JSON"):
        parse_json("[NaN]", "merge", "results.json")
