"""Files the runner reads from users, CI caches and merged shards: the one way in for all of them.

Each file is opened as a regular file only (a FIFO would block the runner, a device such as
/dev/zero never ends), without following links where the caller says links are not followed
(`beneath`: every component under a root, not only the last, as O_NOFOLLOW alone would), and
read up to a cap before anything decodes, decompresses or parses it (`gunzip` caps what it
inflates too). Numbers read from such files are checked against bounds (`number`) before
anything is allocated or computed from them. Every refusal is one UsageError line naming the
file; callers that must not fail (a test's own files) use `read_optional`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from iotests_run.errors import UsageError
from iotests_run.text import printable

T = TypeVar("T")
_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def _mb(limit: int) -> str:
    return f"{limit >> 20} MB" if limit >= 1 << 20 else f"{limit} bytes"


@contextmanager
def _opened(fd: int, path: Path | str, what: str) -> Iterator[int]:
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{what}: not a regular file: {printable(str(path))}")
        yield fd
    finally:
        os.close(fd)


def _open_error(exc: OSError, path: Path | str, what: str) -> UsageError:
    name = printable(str(path))
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return UsageError(f"{what}: no such file: {name}")
    if exc.errno == errno.ELOOP:
        return UsageError(f"{what}: a symbolic link, not followed: {name}")
    return UsageError(f"{what}: cannot read {name} ({exc.strerror or exc})")


def _read_fd(fd: int, path: Path | str, what: str, limit: int) -> bytes:
    with _opened(fd, path, what):
        if os.fstat(fd).st_size > limit:
            raise UsageError(f"{what}: {printable(str(path))} is larger than {_mb(limit)}")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew while read
            raise UsageError(f"{what}: {printable(str(path))} is larger than {_mb(limit)}")
        return b"".join(chunks)


def read_bytes(path: Path, what: str, limit: int, *, follow_links: bool = True) -> bytes:
    """A regular file's bytes, at most limit of them; UsageError for anything else."""
    try:
        fd = os.open(path, _READ | (0 if follow_links else os.O_NOFOLLOW))
    except OSError as exc:
        raise _open_error(exc, path, what) from None
    try:
        return _read_fd(fd, path, what, limit)
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {printable(str(path))} ({exc.strerror or exc})") from None


def read_text(path: Path, what: str, limit: int, *, follow_links: bool = True) -> str:
    """A regular file that must be UTF-8 text."""
    data = read_bytes(path, what, limit, follow_links=follow_links)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what}: {printable(str(path))} is not UTF-8 text (byte {exc.start})") from None


def _read_regular(path: Path, what: str, read: Callable[[int], T]) -> T:
    """read(fd) on a regular file opened without blocking (never a FIFO or device), its errors one UsageError."""
    try:
        fd = os.open(path, _READ)
    except OSError as exc:
        raise _open_error(exc, path, what) from None
    try:
        with _opened(fd, path, what):
            return read(fd)
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {printable(str(path))} ({exc.strerror or exc})") from None


def read_head(path: Path, what: str, limit: int) -> tuple[bytes, int]:
    """A regular file's first limit bytes and its size: for files too big to read whole (a core of
    hundreds of MB), whose header says what they are and how long they must be."""
    def head(fd: int) -> tuple[bytes, int]:
        chunks, got = [], 0
        while got < limit:
            chunk = os.read(fd, min(1 << 20, limit - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks), os.fstat(fd).st_size

    return _read_regular(path, what, head)


def read_at(path: Path, what: str, offset: int, size: int, limit: int | None = None) -> bytes:
    """Up to size bytes of a regular file from offset (fewer at its end): a part its own headers located, of a
    file too big to read whole (a core's notes, which gdb's gcore writes after the memory; an executable's
    dynamic string table). With a limit, a larger part (or a negative offset) is refused; without, the caller
    caps size."""
    if limit is not None and (size > limit or offset < 0):
        raise UsageError(f"{what}: {printable(str(path))}: a part of {size} bytes at {offset} is refused "
                         f"(at most {_mb(limit)})")
    return _read_regular(path, what, lambda fd: os.pread(fd, size, offset) if size > 0 and offset >= 0 else b"")


def read_optional(path: Path, limit: int, *, follow_links: bool = True) -> str | None:
    """A file a test (or a merged folder) may have planted: its first limit bytes as text, or None when
    it is absent, not a regular file or unreadable. Never blocks, never raises."""
    try:
        fd = os.open(path, _READ | (0 if follow_links else os.O_NOFOLLOW))
    except OSError:
        return None
    try:
        with _opened(fd, path, ""):
            return os.read(fd, limit).decode("utf-8", errors="replace")
    except (OSError, UsageError):
        return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(data: bytes | str, what: str, path: Path | str) -> Any:
    """JSON text (no NaN or Infinity); UsageError naming the file when it is not."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{what}: {printable(str(path))} is not JSON ({printable(str(exc))[:100]})") from None


def gunzip(data: bytes, what: str, path: Path | str, limit: int) -> bytes:
    """A gzip stream inflated to at most limit bytes (a small bomb stops at the cap, not in MemoryError)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise UsageError(f"{what}: {printable(str(path))} is not gzip data ({exc})") from None
    if len(out) > limit:
        raise UsageError(f"{what}: {printable(str(path))} inflates to more than {_mb(limit)}")
    if not inflater.eof:
        raise UsageError(f"{what}: {printable(str(path))} is a truncated gzip stream")
    return out


def relative_parts(rel: str, what: str) -> tuple[str, ...]:
    """A relative path's components; UsageError for an absolute path or one that climbs with `..`."""
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or any(p in ("..", "") for p in parts) or "\0" in rel:
        raise UsageError(f"{what}: not a path inside its folder: {printable(rel)}")
    return tuple(p for p in parts if p != ".")


def open_beneath(root: Path, rel: str, what: str, *, directory: bool = False) -> int:
    """An fd of root/rel reached without following a link at any component, and never outside root
    (no absolute path, no `..`); a regular file, or a directory when asked. The caller closes it."""
    parts = relative_parts(rel, what)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(exc, root, what) from None
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = (_READ if last and not directory else os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) | os.O_NOFOLLOW
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise _open_error(exc, root / rel, what) from None
            os.close(fd)
            fd = nxt
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode)):
            kind = "a directory" if directory else "a regular file"
            raise UsageError(f"{what}: not {kind}: {printable(str(root / rel))}")
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_in_tree(root: Path, rel: str, what: str, limit: int) -> bytes:
    """root/rel's bytes, rel a name from a file (a coverage map's source names): relative, no `..`, so never
    outside root by its spelling; the tree's own links are followed (it is the user's checkout, or a tree of
    links to one), to a regular file only (never a FIFO or a device), at most limit bytes."""
    relative_parts(rel, what)
    return read_bytes(root / rel, what, limit)


def read_beneath(root: Path, rel: str, what: str, limit: int) -> bytes:
    """root/rel's bytes (open_beneath's rules), at most limit of them."""
    fd = open_beneath(root, rel, what)
    try:
        return _read_fd(fd, root / rel, what, limit)
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {printable(str(root / rel))} ({exc.strerror or exc})") from None


def number(value: Any, what: str, low: float, high: float, *, integer: bool = False) -> float:
    """A JSON number within [low, high] (finite, not a bool, an int where asked); UsageError otherwise."""
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not low <= value <= high or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        shown = "a huge integer" if isinstance(value, int) and value.bit_length() > 64 else printable(repr(value))[:60]
        raise UsageError(f"{what}: {shown} is not {kind} from {low:g} to {high:g}")
    return float(value) if not integer else value
