"""A test's output, however large, read in bounded pieces: compared with its reference, diffed, counted, kept.

A test can print without limit (a loop gone wrong writes hundreds of MB), and reading that output whole
(as lines, then as a diff of every line) once made the runner hold several times its size. Here the
output is only ever streamed: the comparison reads it a line piece at a time and stops at the first line
that differs, the diff covers a window of DIFF_SIDE_LINES lines (DIFF_SIDE_CHARS characters) of each side
and stops at DIFF_BYTES (a finished run keeps REPORT_DIFF_CHARS of it for the reports), and an output kept
larger than KEEP_OUTPUT_BYTES keeps its head and tail. The
reference output is a file of the QEMU tree, small, and is read whole as lines.

Line semantics are check's: UTF-8 (invalid bytes replaced), universal newlines, trailing whitespace ignored.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

PIECE_CHARS = 64 * 1024  # how much of one output line the comparison reads at a time
DIFF_SIDE_LINES = 20_000  # the diff covers at most this many first lines of each side...
DIFF_SIDE_CHARS = 4 << 20  # ...and at most this many characters of each
DIFF_BYTES = 1 << 20  # diff text beyond this is cut; a line saying so follows
KEEP_OUTPUT_BYTES = 16 << 20  # an output kept larger than this keeps its first and last half of it
REPORT_DIFF_CHARS = 64 * 1024  # of a diff held for the reports while the invocation runs (all of diff.txt is kept)
TAIL_BYTES = 64 * 1024  # the end of a truncated diff's output still searched for a crash message
COPY_BYTES = 1 << 20


def _open_text(path: Path) -> TextIO:
    # errors="replace": check would crash on invalid UTF-8; we still judge the run.
    return path.open(encoding="utf-8", errors="replace")


def reference_lines(path: Path) -> list[str]:
    """The reference output's lines, trailing whitespace removed (a small file of the QEMU tree)."""
    with _open_text(path) as f:
        return [line.rstrip() for line in f]


def _next_line_is(f: TextIO, expected: str) -> bool:
    """Whether the stream's next line, trailing whitespace removed, is expected (which has none).

    That is: the line starts with expected and the rest of it is whitespace. Read PIECE_CHARS at a
    time, so that a line of any length costs no more memory; stops at the first character that decides.
    """
    piece = f.readline(PIECE_CHARS)
    if not piece:
        return False  # no line left
    matched = 0
    while True:
        take = min(len(expected) - matched, len(piece))
        if piece[:take] != expected[matched:matched + take]:
            return False
        matched += take
        rest = piece[take:]
        if rest and not rest.isspace():
            return False
        if piece.endswith("\n"):
            return matched == len(expected)
        piece = f.readline(PIECE_CHARS)
        if not piece:  # the last line, without a newline
            return matched == len(expected)


def outputs_agree(reference: list[str], output: Path) -> bool:
    """check's pass condition (its diff is empty): the output's lines, trailing whitespace removed, are the
    reference's; decided at the first line that differs, in bounded memory whatever the output's size."""
    with _open_text(output) as f:
        for expected in reference:
            if not _next_line_is(f, expected):
                return False
        return f.read(1) == ""


def _window(path: Path) -> tuple[list[str], bool]:
    """A file's first lines as the diff shows them (trailing whitespace removed), and whether they are all of it."""
    lines: list[str] = []
    chars = 0
    with _open_text(path) as f:
        while len(lines) < DIFF_SIDE_LINES and chars < DIFF_SIDE_CHARS:
            line = f.readline(DIFF_SIDE_CHARS - chars)
            if not line:
                return lines, True
            chars += len(line)
            lines.append(line.rstrip())
        return lines, f.read(1) == ""


def size_and_lines(path: Path) -> tuple[int, int]:
    """A file's bytes and lines (ended by \\n, \\r\\n or \\r, as universal newlines end them), read in pieces."""
    size = lines = 0
    last = b""
    with path.open("rb") as f:
        while chunk := f.read(COPY_BYTES):
            lines += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
            if last == b"\r" and chunk[:1] == b"\n":
                lines -= 1  # a \r\n split between two pieces
            size += len(chunk)
            last = chunk[-1:]
    return size, lines + (1 if last not in (b"", b"\n", b"\r") else 0)


def megabytes(size: int) -> str:
    return f"{size / (1 << 20):.1f} MB"


@dataclass(frozen=True)
class Diff:
    text: str  # empty when the outputs agree
    truncated: bool  # the diff does not cover both files whole


def capped_diff(reference: Path, output: Path, reference_label: str, output_label: str) -> Diff:
    """Unified diff ignoring trailing whitespace, of the first lines of each side, cut at DIFF_BYTES.

    When cut (or when a side is longer than the window), a last line says so, with the output's size
    and lines, and the diff is never empty then: the files may differ only past the window.
    """
    ref, ref_whole = _window(reference)
    out, out_whole = _window(output)
    kept: list[str] = []
    size, cut = 0, False
    for line in difflib.unified_diff(ref, out, reference_label, output_label):
        data = line.rstrip().encode("utf-8", errors="replace")
        if size + len(data) + 1 > DIFF_BYTES:  # the line that crosses the cap shows as much as fits
            kept.append(data[:max(DIFF_BYTES - size, 0)].decode("utf-8", errors="ignore") + " [line cut]")
            cut = True
            break
        size += len(data) + 1
        kept.append(line.rstrip())
    if not cut and ref_whole and out_whole:
        return Diff("\n".join(kept), False)
    if not kept:
        kept = [f"--- {reference_label}", f"+++ {output_label}"]
    total, lines = size_and_lines(output)
    plural = "" if lines == 1 else "s"
    kept.append(f"diff truncated: output is {megabytes(total)}, {lines} line{plural}; the diff covers at most "
                f"{DIFF_SIDE_LINES} lines ({DIFF_SIDE_CHARS >> 20} MB) of each side and stops at "
                f"{DIFF_BYTES >> 20} MB; see {output_label}")
    return Diff("\n".join(kept), True)


def report_excerpt(diff: str) -> str:
    """The start of a diff that the reports show (junit.xml shows no more, report.html less): what a finished
    run keeps in memory, so that many failing runs cannot add up to gigabytes."""
    if len(diff) <= REPORT_DIFF_CHARS:
        return diff
    return diff[:REPORT_DIFF_CHARS] + f"\n[... {len(diff) - REPORT_DIFF_CHARS} more characters in diff.txt]"


def tail_lines(path: Path, limit: int = TAIL_BYTES) -> list[str]:
    """The output's last lines (within its last limit bytes), trailing whitespace removed."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        start = max(0, f.tell() - limit)
        f.seek(start)
        data = f.read(limit)
    lines = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [line.rstrip() for line in lines[1 if start else 0:]]


def keep_head_and_tail(output: Path, dest: Path, size: int, limit: int = KEEP_OUTPUT_BYTES) -> str:
    """Copy an output larger than limit as its first and last limit/2 bytes with a line between that says
    what was left out; what to note about it."""
    half = limit // 2
    try:
        with output.open("rb") as src, dest.open("wb") as dst:
            _copy(src, dst, half)
            dst.write(f"\n[iotests-run: {size - 2 * half} bytes left out here; the output was {size} bytes "
                      f"({megabytes(size)}), kept are its first and last {megabytes(half)}]\n".encode())
            src.seek(size - half)
            _copy(src, dst, half)
    except OSError:
        dest.unlink(missing_ok=True)  # (a full disk): no half copy left behind
        raise
    return f"{dest.name} kept as its first and last {megabytes(half)}: the output was {megabytes(size)}"


def _copy(src: BinaryIO, dst: BinaryIO, count: int) -> None:
    while count > 0:
        chunk = src.read(min(COPY_BYTES, count))
        if not chunk:
            return
        dst.write(chunk)
        count -= len(chunk)
