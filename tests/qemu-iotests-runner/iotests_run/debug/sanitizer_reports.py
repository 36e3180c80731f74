"""The sanitizer logs a run's processes wrote (tree/sanitizers.py: log_path in the run's own folder): read when the
run ends, the first error explained (debug/sanitizer.py), the reports kept with the run's artifacts. With
--valgrind, valgrind's logs the same way (read_valgrind): the `$TEST_DIR/PID.valgrind` files a test left, else the
log a bash test printed into its output.

The logs are the test's files: read as regular files only, no link followed, each capped; a run that passes reads
a few one-line warnings (ASan's note on swapcontext) and keeps nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from iotests_run.debug.diagnostics import Evidence
from iotests_run.debug.sanitizer import VG_LINE, Report, explain, first_line, parse, parse_valgrind
from iotests_run.inputs import read_optional

REPORT_BYTES = 1 << 20  # per log: a report is a few KB; a process that reported errors without halting, more
MAX_LOGS = 256  # logs read per run (the oldest first)
MAX_KEPT = 16  # reports kept per run


@dataclass(frozen=True)
class Found:
    """One process's log that holds an error."""

    name: str  # the log's file name: PREFIX.PROGRAM.PID
    program: str  # "qemu-io"; "" when the name does not say
    pid: str
    text: str
    report: Report

    @property
    def kept_name(self) -> str:
        return f"{self.program or 'process'}.{self.pid or 'unknown'}.txt"


def program_and_pid(name: str) -> tuple[str, str]:
    """`report.qemu-system-x86_64.4107` (log_exe_name=1) -> ("qemu-system-x86_64", "4107")."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-1].isdigit():
        return ".".join(parts[1:-1]), parts[-1]
    if len(parts) == 2 and parts[-1].isdigit():
        return "", parts[-1]
    return "", ""


def _logs(folder: Path) -> list[str]:
    """The regular files in folder, oldest first (the first error is usually the cause of what follows)."""
    entries = []
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.is_file(follow_symlinks=False):
                    entries.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
    except OSError:
        return []
    return [name for _, name in sorted(entries)[:MAX_LOGS]]


def read_reports(folder: Path) -> list[Found]:
    """Every log in folder that holds an error, oldest first."""
    found = []
    for name in _logs(folder):
        text = read_optional(folder / name, REPORT_BYTES, follow_links=False)
        report = parse(text) if text else None
        if report is not None:
            program, pid = program_and_pid(name)
            found.append(Found(name, program, pid or (str(report.pid) if report.pid else ""), text or "", report))
    return found


VALGRIND_SUFFIX = ".valgrind"  # check's -valgrind: common.rc's and iotests.py's $TEST_DIR/PID.valgrind
VG_COMMAND = re.compile(r"^==(\d+)== Command: (\S+)", re.MULTILINE)


def _valgrind_found(name: str, text: str) -> Found | None:
    """The first error of one valgrind log, its program named by the log's `Command:` line."""
    report = parse_valgrind(text)
    if report is None:
        return None
    command = VG_COMMAND.search(text)
    program = os.path.basename(command.group(2)) if command else ""
    return Found(name, program, str(report.pid), text, report)


def read_valgrind(test_dir: Path, output: Path) -> list[Found]:
    """check -valgrind's reports of a run, oldest first: the PID.valgrind logs left in TEST_DIR (a Python test's VM
    keeps the log of a QEMU valgrind failed), else the one a bash test printed into its output (common.rc prints
    the log on valgrind's exit status 99, then removes the file): that output's lines of the first process
    with an error."""
    found = []
    for name in _logs(test_dir):
        if name.endswith(VALGRIND_SUFFIX):
            text = read_optional(test_dir / name, REPORT_BYTES, follow_links=False)
            report = _valgrind_found(name, text) if text else None
            if report is not None:
                found.append(report)
    if found:
        return found
    text = read_optional(output, REPORT_BYTES, follow_links=False) or ""
    first = parse_valgrind(text)
    if first is None:
        return []
    own = "\n".join(line for line in text.splitlines()
                    if (m := VG_LINE.match(line)) is not None and int(m.group(1)) == first.pid)
    return [f] if (f := _valgrind_found(f"{first.pid}{VALGRIND_SUFFIX}", own)) is not None else []


def cause(found: list[Found]) -> str:
    """The verdict's reason: who reported what (the explanation, in front of it, says where)."""
    first = found[0]
    pid = f" (pid {first.pid})" if first.pid else ""
    return f"{first.report.tool} report from {first.program or 'a process'}{pid}"


def keep_reports(found: list[Found], dest: Path, rel: str) -> tuple[Evidence, list[str]]:
    """The reports written to dest (rel: its path in the results folder), the Evidence that explains the first,
    and the attachments. What cannot be written is said in the summary; the explanation stands."""
    written: list[str] = []
    problem = ""
    what = "valgrind" if found[0].report.tool == "Valgrind" else "sanitizer"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for f in found[:MAX_KEPT]:
            (dest / f.kept_name).write_text(f.text, encoding="utf-8", errors="replace")
            written.append(f"{rel}/{f.kept_name}")
    except OSError as exc:
        problem = f"{what} reports not kept: {exc.strerror or exc}"
    first = found[0]
    explanation = explain(first.report, first.program, written[0] if written else "", len(found) - 1)
    summary = [f"{len(found)} {what} report{'s' if len(found) != 1 else ''}: "
               + "; ".join(first_line(f.report, f.program) for f in found[:3])]
    if problem:
        summary.append(problem)
    return Evidence((), "\n".join(summary), cause=cause(found), explanation=explanation), written
