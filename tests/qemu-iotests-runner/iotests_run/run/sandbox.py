"""A run's folders: where they live, how they are made, kept and removed.

Each run gets its own TEST_DIR, SOCK_DIR and TMPDIR under a short per-invocation scratch
root on the build folder's file system; TEST_DIR moves into the results folder when the run
did not pass. Removal never follows a link out of a folder or crosses into another mount.
(Processes start and stop in supervise.py; the live runs are in registry.py.)
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from iotests_run.files import move_tree, release_mounts, remove_tree

SOCKET_PATH_LIMIT = 107
# Room left in SOCK_DIR for the longest socket names tests use ("nbd-fault-injector.sock" and so on).
SOCKET_NAME_ROOM = 40


@dataclass(frozen=True)
class Sandbox:
    run_dir: Path  # under the results folder, made when something is kept there: after anything but a pass
    test_dir: Path
    sock_dir: Path
    tmp_dir: Path

    @property
    def upper(self) -> Path:
        """The run's layer over the iotests folder (see isolation.Overlay): core dumps land here."""
        return self.test_dir.parent / "o" / "u"

    @property
    def work(self) -> Path:
        return self.test_dir.parent / "o" / "w"

    @property
    def sanitizer_dir(self) -> Path:
        """Where a sanitizer build's processes write their reports (ASAN_OPTIONS log_path): beside TEST_DIR, read
        when the run ends, the reports moved to run_dir when kept."""
        return self.test_dir.parent / "san"

    def output(self, name: str) -> Path:
        """Where the test's output goes while it runs: beside TEST_DIR, not in the results folder, so that a full
        results disk cannot cut it short (and change the verdict); moved to run_dir when kept."""
        return self.test_dir.parent / f"{name}.out.bad"

    def create(self) -> None:
        if not remove_tree(self.run_dir):
            raise OSError(f"cannot empty {self.run_dir}, left by an earlier run")
        for d in (self.test_dir, self.sock_dir, self.tmp_dir, self.upper, self.work, self.sanitizer_dir):
            if not remove_tree(d):
                raise OSError(f"cannot empty {d}, left by an earlier run")
            d.mkdir(parents=True)

    def discard(self) -> None:
        """After a pass: nothing is kept."""
        self.discard_scratch()
        remove_tree(self.run_dir)

    def discard_scratch(self) -> None:
        release_mounts(self.test_dir.parent)
        remove_tree(self.test_dir.parent)

    def keep(self) -> None:
        """After anything else: TEST_DIR moves into the run's artifacts folder."""
        release_mounts(self.test_dir.parent)
        move_tree(self.test_dir, self.run_dir / "scratch")
        remove_tree(self.test_dir.parent)


PLAIN_PATH = re.compile(r"^[-_a-zA-Z0-9/]+$")
SCRATCH_CANDIDATES = ("/tmp", "/var/tmp", "/dev/shm")


def default_scratch(build: Path) -> Path:
    """Where sandboxes live: a plain folder on the file system of check's own TEST_DIR (the build folder).

    Some iotests decide by the file system whether they apply (220 needs files larger than
    ext4 allows and runs on tmpfs; cache=none tests need O_DIRECT), so the scratch folder
    sits where check's would, or verdicts could differ from check's.
    """
    try:
        device = build.stat().st_dev
    except OSError:
        return Path("/tmp")
    for candidate in SCRATCH_CANDIDATES:
        try:
            if os.stat(candidate).st_dev == device and os.access(candidate, os.W_OK | os.X_OK):
                return Path(candidate)
        except OSError:
            continue
    return Path("/tmp")


class ShortRoot:
    """A short, plain per-invocation folder for each run's TEST_DIR, SOCK_DIR and TMPDIR.

    Short because unix socket paths are limited; plain (letters, digits, `-_/`)
    because some iotests (197, 215) refuse to run in a TEST_DIR with other characters.
    """

    def __init__(self, base: Path) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="iotr-", dir=base))

    @staticmethod
    def check_base(base: Path) -> str | None:
        """Why this folder cannot hold sandboxes, or None."""
        if not base.is_dir():
            return "does not exist"
        if not PLAIN_PATH.match(str(base)):
            return "has characters other than letters, digits and -_/ (iotests 197 and 215 refuse such a TEST_DIR)"
        if len(str(base)) + SOCKET_NAME_ROOM + 20 > SOCKET_PATH_LIMIT:
            return "is too long for unix socket paths under it"
        if not os.access(base, os.W_OK | os.X_OK):
            return "is not writable"
        return None

    def sandbox(self, slot: str, run_dir: Path) -> Sandbox:
        short = self.path / slot
        return Sandbox(run_dir=run_dir, test_dir=short / "scratch", sock_dir=short / "s", tmp_dir=short / "t")

    def close(self) -> None:
        remove_tree(self.path)
