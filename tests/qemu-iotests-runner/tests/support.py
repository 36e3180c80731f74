"""Helpers shared by the tests: fake QEMU trees and running the real command; then, by subject, what more than one
test file builds (gcov binaries, coverage maps and diffs, block-state documents and cores, results)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from iotests_run.affected import coverage_map
from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.tree.discovery import Catalog, discover

MACHINE_HELP = """Supported machines are:
microvm              microvm (i386)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)
"""


@dataclass
class FakeTree:
    """A QEMU-shaped tree whose iotests are tiny scripts written by the test."""

    source: Path
    build: Path

    @property
    def iotests(self) -> Path:
        return self.source / "tests" / "qemu-iotests"

    def add_test(self, name: str, body: str, out: str | None = "", groups: str = "quick",
                 python: bool = False) -> Path:
        path = self.iotests / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shebang = "#!/usr/bin/env python3" if python else "#!/usr/bin/env bash"
        path.write_text(f"{shebang}\n# group: {groups}\n" + textwrap.dedent(body))
        path.chmod(0o755)
        if out is not None:
            Path(f"{path}.out").write_text(out)
        return path

    def args(self, results: Path) -> list[str]:
        return ["--qemu-source", str(self.source), "--qemu-build", str(self.build), "--results", str(results)]


def _script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def run_cli(args: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600, as_nobody: bool = False) -> Completed:
    """The real command, in a child process, as a user would run it (as_nobody: as an unprivileged user)."""
    python = sys.executable
    if as_nobody and os.geteuid() == 0:
        python, env = _unprivileged_python(env)
    proc = subprocess.run([python, "-m", "iotests_run", *args, *history_of_the_suite(args)], cwd=cwd, env=env,
                          user=NOBODY if as_nobody and os.geteuid() == 0 else None,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    return Completed(proc.returncode, proc.stdout, proc.stderr)


def run_cli_measured(args: Sequence[str], timeout: float = 600) -> tuple[Completed, int]:
    """run_cli, and the command's own peak memory in MB: its VmHWM (the high-water mark of its memory since its
    exec), read until it exits. ru_maxrss would not do: RUSAGE_CHILDREN is the largest child pytest ever waited
    for, and a forked child's own ru_maxrss starts at the forking pytest's size."""
    proc = subprocess.Popen([sys.executable, "-m", "iotests_run", *args, *history_of_the_suite(args)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_kb, deadline = 0, time.monotonic() + timeout
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            lines = status.read_text().splitlines()
        except OSError:
            break
        peak_kb = max([peak_kb, *(int(line.split()[1]) for line in lines if line.startswith("VmHWM:"))])
        time.sleep(0.02)
    out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
    return Completed(proc.returncode, out, err), peak_kb >> 10


NOBODY = 65534


_SUITE_HISTORY: list[Path] = []


def history_of_the_suite(args: Sequence[str]) -> list[str]:
    """Runs of the test suite keep their duration and outcome history to themselves: in the user's
    ~/.cache file, the suite's many fake trees would push out the reference trees' histories."""
    if args[:1] in (["merge"], ["block-state"], ["shell"]) or any(a == "--history" or a.startswith("--history=")
                                                                   for a in args):
        return []
    if not _SUITE_HISTORY:
        import tempfile

        _SUITE_HISTORY.append(Path(tempfile.mkdtemp(prefix="iotr-suite-history-")) / "durations.json")
    return ["--history", str(_SUITE_HISTORY[0])]


def _unprivileged_python(env: dict[str, str] | None) -> tuple[str, dict[str, str]]:
    """An interpreter of this Python version that an unprivileged user may run, finding the installed runner.

    A pyenv interpreter under /root is out of reach for other users; the system's one of the
    same version loads the runner and its dependencies from this environment's site-packages.
    """
    import pytest

    import iotests_run

    site = str(Path(iotests_run.__file__).resolve().parents[1])
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = site
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        try:
            probe = subprocess.run([python, "-c", "import iotests_run, psutil"], user=NOBODY, env=env, cwd="/",
                                   capture_output=True, stdin=subprocess.DEVNULL)
        except OSError:
            continue
        if probe.returncode == 0:
            return python, env
    pytest.skip(f"no {version} that an unprivileged user can run with the runner installed")


@dataclass
class ReferenceTree:
    source: Path
    build: Path

    def args(self, results: Path) -> list[str]:
        return ["--qemu-source", str(self.source), "--qemu-build", str(self.build), "--results", str(results)]




REPO = Path(__file__).resolve().parents[3]


def bug_tree(version: str) -> ReferenceTree:
    """The bug tree of a QEMU version (tools/bugtrees.py: the reference sources with every injected bug's
    dormant patch, built once per set of patches)."""
    if str(REPO / "tools") not in sys.path:
        sys.path.insert(0, str(REPO / "tools"))
    from iotests_tools import bugtrees

    source, build = bugtrees.bug_tree(version)
    return ReferenceTree(source, build)


def make_fake_tree(top: Path) -> FakeTree:
    src, build = top / "src", top / "build"
    iotests = src / "tests" / "qemu-iotests"
    iotests.mkdir(parents=True)
    (src / "python").mkdir()
    (src / "VERSION").write_text("7.2.0\n")
    (iotests / "common.rc").write_text("# fake\n")
    for name in ("qemu-img", "qemu-io", "qemu-nbd", "storage-daemon/qemu-storage-daemon"):
        _script(build / name, "#!/bin/sh\nexit 0\n")
    _script(build / "qemu-system-x86_64", f"#!/bin/sh\ncat <<'EOF'\n{MACHINE_HELP}EOF\n")
    return FakeTree(src, build)


# gcov: a fake qemu-img built with gcc --coverage ---------------------------------------------------------

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed")


FAKE_C = """\
#include <stdio.h>
#include <string.h>

static int grow(int n)
{
    return n * 2;
}

/* shrink: only `qemu-img shrink` runs it */
static int shrink(int n)
{
    if (n > 1) {
        return n / 2;
    }
    return n;
}

static void nothing(void) { }

int main(int argc, char **argv)
{
    nothing();
    if (argc > 1 && strcmp(argv[1], "grow") == 0) {
        printf("%d\\n", grow(argc));
    } else if (argc > 1 && strcmp(argv[1], "shrink") == 0) {
        printf("%d\\n", shrink(argc));
    } else if (argc > 1 && strcmp(argv[1], "wait") == 0) {
        extern int pause(void);
        printf("%d\\n", grow(argc));
        fflush(stdout);
        pause();
    }
    return 0;
}
"""


def gcov_binary(source: Path, build: Path, name: str = "qemu-img") -> Path:
    """Compile source as QEMU's build does: from the build folder, with --coverage."""
    assert GCC is not None
    build.mkdir(parents=True, exist_ok=True)
    binary = build / name
    if binary.exists():
        binary.unlink()
    subprocess.run([GCC, "--coverage", "-O0", "-o", name, str(Path("..") / source.relative_to(build.parent))],
                   cwd=build, check=True)
    return binary


# Coverage maps and diffs (--affected-by) ------------------------------------------------------------------

MAP_TREE = "QEMU 7.2.0 tests:x"
ALPHA_C = "int alpha(void)\n{\n    return 1;\n}\n"


def catalog_of_two(fake_tree: FakeTree) -> Catalog:
    """Tests 001 and 002, both passing."""
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fake_tree.add_test("002", "echo ok\n", out="ok\n")
    return discover(fake_tree.iotests)


def map_json(**over: Any) -> dict[str, Any]:
    """A coverage map's document: block/qcow2.c's alpha run by qcow2-file/001, beta by 002 (over: fields replaced)."""
    data: dict[str, Any] = {
        "format": coverage_map.FORMAT, "tree": MAP_TREE, "created": "2026-01-01T00:00:00Z",
        "files": {"block/qcow2.c": [["alpha", 10, 14], ["beta", 20, 35]]}, "digests": {},
        "runs": {"qcow2-file/001": base64.b64encode(bytes([0b01])).decode(),
                 "qcow2-file/002": base64.b64encode(bytes([0b10])).decode()},
        "uncounted": []}
    data.update(over)
    return data


def write_map(path: Path, data: Any) -> Path:
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    return path


def one_file_diff(hunk_header: str, path: str = "block/qcow2.c") -> str:
    """A git diff of one file with one hunk under hunk_header."""
    return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n{hunk_header}\n-x\n+y\n"


# Block-state documents and cores (block-state, debug/) ---------------------------------------------------

DOT = shutil.which("dot")
needs_dot = pytest.mark.skipif(DOT is None, reason="graphviz's dot is not installed")


def block_node(**fields: Any) -> dict[str, Any]:
    """A node of a block-state document as the gdb walker writes it (fields: what differs)."""
    base = {"address": "0x10", "node_name": "top", "driver": "qcow2", "filename": "/img/a.qcow2", "refcnt": 1,
            "aio_context": "0x1", "in_flight": 0, "quiesce_counter": 0, "children": [], "requests": []}
    return {**base, **fields}


def block_state(*nodes: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A block-state document holding nodes (fields: what differs)."""
    base = {"main_aio_context": "0x1", "nodes": list(nodes), "backends": [], "jobs": [], "drain_all_count": 0,
            "graph_writer": None, "threads": []}
    return {**base, **fields}


HOSTILE_STATE = block_state(
    block_node(filename="/img/a\nforged: line\x1b[2J&b.qcow2", node_name='n"<b>\\\x1b'),
    block_node(address="0x20", node_name="base", filename="/img/base\x9b.raw",
               children=[], requests=[{"type": "write\x1b", "offset": 0, "bytes": 512, "co": "0x99",
                                       "backtrace": [{"function": "f\nx", "pc": "0x1", "file": "a\x1b.c",
                                                      "line": 3}]}]),
    backends=[{"address": "0x30", "name": "drive\x1b0", "root": "0x10", "in_flight": 0}],
    jobs=[{"address": "0x40", "id": "job\n1", "type": "mirror", "status": "running", "nodes": []}],
    threads=[{"num": 1, "name": "qemu\x1b", "current": None, "callers": []}],
)


def elf(segments: list[tuple[int, int, int]], *, cls: int = 2, order: str = "<", e_type: int = 4,
        xnum: bool = False, size: int | None = None) -> bytes:
    """An ELF file whose program headers list (p_type, p_offset, p_filesz); zeros up to size (default: all)."""
    header, entry = ("16sHHIQQQIHHHHHH", "IIQQQQQQ") if cls == 2 else ("16sHHIIIIIHHHHHH", "IIIIIIII")
    ehsize, phentsize = struct.calcsize(order + header), struct.calcsize(order + entry)
    phoff = ehsize
    shoff = phoff + phentsize * len(segments) if xnum else 0
    ident = b"\x7fELF" + bytes([cls, 1 if order == "<" else 2, 1]) + bytes(9)
    phnum = 0xFFFF if xnum else len(segments)
    out = struct.pack(order + header, ident, e_type, 62, 1, 0, phoff, shoff, 0, ehsize, phentsize, phnum,
                      64 if xnum else 0, 1 if xnum else 0, 0)
    for p_type, offset, filesz in segments:
        values = (p_type, 4, offset, 0, 0, filesz, filesz, 4096) if cls == 2 else (
            p_type, offset, 0, 0, filesz, filesz, 4, 4096)
        out += struct.pack(order + entry, *values)
    if xnum:  # section header 0: sh_info holds the count
        out += struct.pack(order + "IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, len(segments), 0, 0)
    end = max([len(out), *(o + f for _, o, f in segments)])
    return (out + bytes(end - len(out)))[:size]


GOOD_SEGMENTS = [(4, 0x1000, 0x200), (1, 0x2000, 0x3000), (1, 0x5000, 0)]


# The command line and results folders ------------------------------------------------------------------

def expect_usage_error(tmp_path: Path, args: list[str], *needles: str, env: dict[str, str] | None = None,
                       cwd: Path | None = None) -> None:
    """Bad input: one line naming it (needles), exit status 2, no traceback, no test started."""
    proc = run_cli(args, env=env, cwd=cwd or tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("iotests-run: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "started").exists()


def tree_args(tree: FakeTree, results: Path, *more: str) -> list[str]:
    """The tree and results folder as options, with a history beside the results (never the user's)."""
    return [*tree.args(results), "--history", str(results.parent / "history.json"), *more]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file's text and every folder under folder, to show that nothing changed."""
    return {str(p.relative_to(folder)): p.read_text() if p.is_file() else "/" for p in sorted(folder.rglob("*"))}


def runs_by_test(results: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """results.json's runs by (format, test)."""
    data = json.loads((results / "results.json").read_text())
    return {(r["format"], r["test"]): r for r in data["runs"]}


# Results to report --------------------------------------------------------------------------------------

def case(key: str) -> TestCase:
    return TestCase(key=key, path=Path("/src/tests/qemu-iotests") / key, groups=frozenset({"quick"}))


def result(key: str, outcome: Outcome, fmt: str = "qcow2", **kw: object) -> Result:
    return Result(Run(case(key), fmt, "file"), outcome, **kw)  # type: ignore[arg-type]


# One of each outcome a report shows, two formats, text with control characters.
RESULTS = [
    result("001", Outcome.PASS, duration_s=1.5),
    result("002", Outcome.FAIL, reason="output mismatch", diff="--- a\n+++ b\n-x\n+y\x01",
           artifacts="runs/qcow2-file/002", duration_s=2.0, output_tail="out\x00put"),
    result("tests/named", Outcome.NOT_RUN, reason="not suitable for this image format: qcow2"),
    result("001", Outcome.PASS, fmt="raw", duration_s=0.5),
    result("003", Outcome.INTERRUPTED, reason="interrupted by the user"),
]


@contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """folder (made if need be) as a tmpfs of size ("2M", "64k"): a disk to fill (we are root in CI); the test is
    skipped where mounts are not allowed. Unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, stdin=subprocess.DEVNULL)
