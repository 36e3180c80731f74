"""Process control: every test process starts here, and every one is ended here.

Each run gets its own folders (TEST_DIR, SOCK_DIR and TMPDIR under a short
/tmp root; TEST_DIR moves into the results folder when the run did not pass)
and its own session, so the whole process group can be killed. A registry of live
process groups lets an interrupted runner end everything it started.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SOCKET_PATH_LIMIT = 107
# Room left in SOCK_DIR for the longest socket names tests use ("nbd-fault-injector.sock" and so on).
SOCKET_NAME_ROOM = 40


@dataclass(frozen=True)
class Sandbox:
    run_dir: Path  # under the results folder; kept after anything but a pass
    test_dir: Path
    sock_dir: Path
    tmp_dir: Path

    def create(self) -> None:
        for d in (self.run_dir, self.test_dir, self.sock_dir, self.tmp_dir):
            if d.exists():
                remove_tree(d)
            d.mkdir(parents=True)

    def discard(self) -> None:
        """After a pass: nothing is kept."""
        for d in (self.run_dir, self.test_dir.parent):
            remove_tree(d)

    def keep(self) -> None:
        """After anything else: TEST_DIR moves into the run's artifacts folder."""
        move_tree(self.test_dir, self.run_dir / "scratch")
        remove_tree(self.test_dir.parent)


def remove_tree(path: Path) -> None:
    """Remove a folder without following symlinks out of it (rmtree unlinks links, never descends)."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def move_tree(src: Path, dst: Path) -> None:
    """Rename when on one filesystem, else copy keeping sparse images sparse and links as links."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True,
                       stdin=subprocess.DEVNULL, capture_output=True)
        remove_tree(src)


class ShortRoot:
    """A short, plain per-invocation folder for each run's TEST_DIR, SOCK_DIR and TMPDIR.

    Short because unix socket paths are limited; plain (letters, digits, `-_/`)
    because some iotests (197, 215) refuse to run in a TEST_DIR with other characters.
    """

    def __init__(self) -> None:
        base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
        self.path = Path(tempfile.mkdtemp(prefix="iotr-", dir=base))
        if len(str(self.path)) + SOCKET_NAME_ROOM > SOCKET_PATH_LIMIT:
            raise OSError(f"temporary folder path too long for unix sockets: {self.path}")

    def sandbox(self, index: int, run_dir: Path) -> Sandbox:
        short = self.path / str(index)
        return Sandbox(run_dir=run_dir, test_dir=short / "scratch", sock_dir=short / "s", tmp_dir=short / "t")

    def close(self) -> None:
        remove_tree(self.path)


class Registry:
    """The process groups of live runs, so that an interrupt ends them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self.stopping = threading.Event()

    def add(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)

    def discard(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)

    def kill_all(self) -> None:
        self.stopping.set()
        with self._lock:
            groups = list(self._groups)
        for pgid in groups:
            kill_group(pgid, signal.SIGKILL)


def kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_in_session(argv: list[str], cwd: Path, env: Mapping[str, str], output: Path,
                   registry: Registry) -> int:
    """Run argv in its own session with stdin /dev/null and stdout+stderr to output.

    Whatever is left of its process group when it exits is killed.
    """
    with output.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    registry.add(proc.pid)
    try:
        if registry.stopping.is_set():
            kill_group(proc.pid, signal.SIGKILL)
        return proc.wait()
    finally:
        kill_group(proc.pid, signal.SIGKILL)
        registry.discard(proc.pid)
