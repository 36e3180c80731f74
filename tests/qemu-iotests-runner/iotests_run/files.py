"""Files and folders the runner writes and removes: report files written atomically (a killed runner
leaves a valid file behind), and trees removed, moved and measured without following a link out of a
folder or crossing into another mount (a run's scratch folders, a claimed results folder)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def write_atomically(path: Path, text: str | bytes | Iterable[str]) -> None:
    """text whole, or as chunks of it (a million runs' results.json is never one string in memory)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in [text] if isinstance(text, (str, bytes)) else text:
                f.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mount_points() -> list[str]:
    """Mount points as this process sees them (/proc/self/mountinfo's 5th field, octal escapes undone)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            fields = [line.split() for line in f]
    except OSError:
        return []
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), x[4]) for x in fields if len(x) > 4]


def _under(folder: Path) -> list[str]:
    """The mount points at or below a folder, matched on its real path (mountinfo holds real paths)."""
    real = os.path.realpath(folder)
    return [m for m in mount_points() if m == real or m.startswith(real.rstrip("/") + "/")]


def release_mounts(folder: Path) -> list[str]:
    """Lazily unmount whatever a run left mounted under its folder (FUSE exports), deepest first.

    With a mount namespace per run these vanish with it; this is the fallback where there is
    none. fusermount works for the user's own FUSE mounts; umount -l needs root.
    """
    left = sorted(_under(folder), key=len, reverse=True)
    for point in left:
        for argv in (["fusermount3", "-u", "-z", point], ["fusermount", "-u", "-z", point], ["umount", "-l", point]):
            if shutil.which(argv[0]) is None:
                continue
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
            if done.returncode == 0:
                break
    return left


def _let_in(folder: str, mode: int) -> None:
    """Give the owner rwx on a folder a test made unreadable or read-only (as non-root it could not be emptied)."""
    if mode & 0o700 != 0o700:
        try:
            os.chmod(folder, stat.S_IMODE(mode) | 0o700)
        except OSError:
            pass


FILE, FOLDER, MOUNT = "file", "folder", "mount"


def _walk_own(root: str) -> Iterator[tuple[str, str]]:
    """Every path below root, folders after their contents (so they can be removed), root last.

    Never follows a symlink and never enters another mount (a mount point, found in
    mountinfo or by its device, is yielded as not ours, with nothing below it; root too); folders a test
    locked are opened up first. Iterative: a test can make folders deeper than Python's stack.
    Yields (path, FILE, FOLDER or MOUNT); a symlink is a FILE.
    """
    try:
        top = os.lstat(root)
    except OSError:
        return
    mounts = set(_under(Path(root)))  # one read of mountinfo per walk
    if root in mounts:
        yield root, MOUNT
        return
    stack: list[tuple[str, bool]] = [(root, False)]
    while stack:
        folder, listed = stack.pop()
        if listed:
            yield folder, FOLDER
            continue
        stack.append((folder, True))
        _let_in(folder, os.lstat(folder).st_mode)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(info.st_mode):
                yield entry.path, FILE
            elif entry.path in mounts or info.st_dev != top.st_dev:
                yield entry.path, MOUNT
            else:
                stack.append((entry.path, False))


def remove_tree(path: Path) -> bool:
    """Remove a file or folder as far as it is ours; True when nothing is left.

    A symlink is unlinked, never followed; a mount below the folder (a bind mount a test
    left, a FUSE export) is left alone with everything in it, and then so are the folders
    above it.
    """
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            path.unlink()
            return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
    root = os.path.join(os.path.realpath(path.parent), path.name)
    for entry, kind in _walk_own(root):
        try:
            if kind == FOLDER:
                os.rmdir(entry)
            elif kind == FILE:
                os.unlink(entry)
        except OSError:
            pass  # a folder above a mount stays, and so does what the kernel refuses
    return not os.path.lexists(root)


def open_up(path: Path) -> None:
    """Let the owner read every file and enter and change every folder under path (as the cp and rename of
    a kept TEST_DIR need when the test locked some of it)."""
    for entry, kind in _walk_own(os.path.join(os.path.realpath(path.parent), path.name)):
        try:
            mode = os.lstat(entry).st_mode
            if kind == FILE and stat.S_ISREG(mode) and not mode & 0o400:
                os.chmod(entry, stat.S_IMODE(mode) | 0o400)
        except OSError:
            pass


def move_tree(src: Path, dst: Path) -> None:
    """Rename when on one filesystem, else copy keeping sparse images sparse and links as links."""
    open_up(src)
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        proc = subprocess.run(["cp", "-a", "--one-file-system", "--sparse=always", str(src), str(dst)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
        if proc.returncode != 0:  # (a full disk): no half copy left behind
            remove_tree(dst)
            raise OSError(f"cp to {dst} failed: {proc.stderr.strip()[-300:]}") from exc
        remove_tree(src)


def tree_size(path: Path) -> int:
    """The bytes a folder's files take on disk (sparse images by their allocated blocks), links not followed."""
    total = 0
    for top, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
            except OSError:
                pass
    return total
