"""Text that came from tests or from files made safe to print: no control character reaches a terminal raw.

A test's output, its .notrun text and names in a merged results.json may hold escape
sequences that would rewrite a terminal (or a CI log viewer that renders them), or line
breaks that would forge lines in TAP and one-line error messages.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from iotests_run.errors import UsageError

# C0 controls but tab and newline, DEL, C1 controls (an 8-bit CSI is 0x9b).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def terminal_safe(text: str) -> str:
    """Lines kept, every other control character shown as \\xNN."""
    return _CONTROLS.sub(_escape, text)


def printable(text: str) -> str:
    """One line: newlines and tabs escaped too (for names and values inside a message)."""
    return terminal_safe(text).replace("\n", "\\n").replace("\t", "\\t")


def read_file_text(path: Path, limit: int, follow_links: bool = True) -> str | None:
    """A file a test (or a merged folder) may have planted: a regular file only, never a FIFO or a
    device (a FIFO would block the runner), at most limit bytes; None when there is none. A test's
    own files are read through links, as check reads them; a merged folder's are not."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(limit).decode("utf-8", errors="replace")


def read_small_text(path: Path, what: str, limit: int = 1 << 20) -> str:
    """A small UTF-8 file a user named (never a device, a FIFO or a huge file); UsageError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{what}: not a regular file: {path}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{what}: {path} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what}: {path} is not UTF-8 text (byte {exc.start})") from None
