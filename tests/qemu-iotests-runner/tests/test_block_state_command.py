"""`iotests-run block-state` on bad input: outputs, pids, cores, and strings read from QEMU's memory.

Most tests run the real command with a fake gdb first on PATH (it logs that it ran and hands the
walker's output file a crafted document); a few use the real gdb, skipped where it is missing.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from iotests_run.debug import block_state_command, blockstate, diagnostics
from iotests_run.debug.diagnostics import check_core, examine_cores
from iotests_run.errors import SetupError, UsageError
from iotests_run.inputs import read_head
from support import Completed, run_cli

GDB = shutil.which("gdb")
DOT = shutil.which("dot")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed")
needs_dot = pytest.mark.skipif(DOT is None, reason="graphviz's dot is not installed")

FAKE_GDB = """#!/bin/sh
echo "$*" >> "$FAKE_GDB_LOG"
for a in "$@"; do case "$a" in "iotests-block-state "*) out="${a#iotests-block-state }";; esac; done
[ -n "$out" ] && cp "$FAKE_STATE" "$out"
exit 0
"""


def node(**fields: Any) -> dict[str, Any]:
    base = {"address": "0x10", "node_name": "top", "driver": "qcow2", "filename": "/img/a.qcow2", "refcnt": 1,
            "aio_context": "0x1", "in_flight": 0, "quiesce_counter": 0, "children": [], "requests": []}
    return {**base, **fields}


def state(*nodes: dict[str, Any], **fields: Any) -> dict[str, Any]:
    base = {"main_aio_context": "0x1", "nodes": list(nodes), "backends": [], "jobs": [], "drain_all_count": 0,
            "graph_writer": None, "threads": []}
    return {**base, **fields}


HOSTILE = state(
    node(filename="/img/a\nforged: line\x1b[2J&b.qcow2", node_name='n"<b>\\\x1b'),
    node(address="0x20", node_name="base", filename="/img/base\x9b.raw",
         children=[], requests=[{"type": "write\x1b", "offset": 0, "bytes": 512, "co": "0x99",
                                 "backtrace": [{"function": "f\nx", "pc": "0x1", "file": "a\x1b.c", "line": 3}]}]),
    backends=[{"address": "0x30", "name": "drive\x1b0", "root": "0x10", "in_flight": 0}],
    jobs=[{"address": "0x40", "id": "job\n1", "type": "mirror", "status": "running", "nodes": []}],
    threads=[{"num": 1, "name": "qemu\x1b", "current": None, "callers": []}],
)


@pytest.fixture
def fake_gdb(tmp_path: Path) -> dict[str, str]:
    """The environment that puts the fake gdb first on PATH, its log and the document it hands over."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "gdb").write_text(FAKE_GDB)
    (folder / "gdb").chmod(0o755)
    (tmp_path / "state.json").write_text(json.dumps(state(node())))
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "FAKE_GDB_LOG": str(tmp_path / "gdb.log"),
            "FAKE_STATE": str(tmp_path / "state.json")}


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose program is called qemu-io (sleep under that name)."""
    program = tmp_path / "qemu-io"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", program)
    proc = subprocess.Popen([str(program), "300"], stdin=subprocess.DEVNULL)
    yield proc
    proc.kill()
    proc.wait()


def one_line_exit_2(proc: Completed, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iotests-run: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def gdb_ran(tmp_path: Path) -> bool:
    return (tmp_path / "gdb.log").exists()


# 1. Outputs ------------------------------------------------------------------------------------------

@pytest.mark.process
def test_outputs_that_cannot_be_written_are_refused_before_gdb_runs(tmp_path: Path, fake_gdb: dict[str, str],
                                                                    fake_qemu: subprocess.Popen[bytes]) -> None:
    (tmp_path / "real.dot").write_text("keep me")
    (tmp_path / "link.dot").symlink_to(tmp_path / "real.dot")
    (tmp_path / "a-file").write_text("")
    pid = str(fake_qemu.pid)
    cases = {
        ("--dot", str(tmp_path)): "a directory",
        ("--dot", f"{tmp_path}/"): "a directory",
        ("--json", "/dev/full"): "not a regular file",
        ("--svg", f"{tmp_path}/missing/g.svg"): "no such folder",
        ("--json", f"{tmp_path}/a-file/g.json"): "cannot write there",
        ("--dot", str(tmp_path / "link.dot")): "a symbolic link, not followed",
        ("--dot", f"{tmp_path}/g", "--json", f"{tmp_path}/./g"): "--dot and --json name the same file",
    }
    for args, needle in cases.items():
        one_line_exit_2(run_cli(["block-state", "--pid", pid, *args], env=fake_gdb), needle)
        assert not gdb_ran(tmp_path), args
    assert (tmp_path / "real.dot").read_text() == "keep me" and (tmp_path / "link.dot").is_symlink()


@pytest.mark.process
@needs_dot
def test_dot_and_svg_and_json_are_all_written(tmp_path: Path, fake_gdb: dict[str, str],
                                              fake_qemu: subprocess.Popen[bytes]) -> None:
    Path(fake_gdb["FAKE_STATE"]).write_text(json.dumps(HOSTILE))
    out = {kind: tmp_path / f"g.{kind}" for kind in ("dot", "svg", "json")}
    (tmp_path / "g.dot").write_text("an old graph")  # replaced whole
    proc = run_cli(["block-state", "--pid", str(fake_qemu.pid), "--dot", str(out["dot"]), "--svg", str(out["svg"]),
                    "--json", str(out["json"])], env=fake_gdb)
    assert proc.returncode == 0, proc.stderr
    assert out["dot"].read_text().startswith("digraph block {")
    ET.parse(out["svg"])
    assert json.loads(out["json"].read_text()) == HOSTILE
    assert sorted(p.name for p in tmp_path.glob("g.*")) == ["g.dot", "g.json", "g.svg"]
    assert not list(tmp_path.glob(".g.*"))  # no temporary file left


@pytest.mark.process
def test_svg_without_graphviz_is_refused_before_gdb_and_writes_no_dot(tmp_path: Path, fake_gdb: dict[str, str],
                                                                      fake_qemu: subprocess.Popen[bytes]) -> None:
    env = {**fake_gdb, "PATH": str(tmp_path / "bin")}  # the fake gdb, no dot
    proc = run_cli(["block-state", "--pid", str(fake_qemu.pid), "--dot", str(tmp_path / "g.dot"),
                    "--svg", str(tmp_path / "g.svg")], env=env)
    one_line_exit_2(proc, "--svg needs graphviz's dot")
    assert not gdb_ran(tmp_path) and not (tmp_path / "g.dot").exists()


@pytest.mark.unit
def test_a_write_that_fails_names_the_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(block_state_command, "_target", lambda *a: (["-p", "1"], "qemu-io (1)", "live"))
    monkeypatch.setattr(block_state_command, "_walk", lambda *a: state(node()))
    real_replace = os.replace

    def full(src: str, dst: str) -> None:  # the rename is what fails, after the data was written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    target = tmp_path / "g.json"
    with pytest.raises(UsageError, match=f"--json {target}: cannot write it \\(No space left on device\\)"):
        block_state_command.main(["--pid", "1", "--json", str(target)])
    monkeypatch.setattr(os, "replace", real_replace)
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""  # the files come first: no dump that looks like success


@pytest.mark.process
def test_a_full_disk_is_one_line_exit_2(tmp_path: Path, fake_gdb: dict[str, str],
                                        fake_qemu: subprocess.Popen[bytes]) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        subprocess.run(f"cat /dev/zero > {disk}/filler", shell=True, capture_output=True)
        proc = run_cli(["block-state", "--pid", str(fake_qemu.pid), "--json", str(disk / "g.json")], env=fake_gdb)
        one_line_exit_2(proc, f"--json {disk}/g.json: cannot write it")
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, stdin=subprocess.DEVNULL)


def _run_with_stdout(args: list[str], env: dict[str, str], stdout: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iotests_run", "block-state", *args], env=env, stdout=stdout,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=120)


@pytest.mark.process
def test_a_stdout_closed_early_or_full_leaves_the_files_written(tmp_path: Path, fake_gdb: dict[str, str],
                                                                 fake_qemu: subprocess.Popen[bytes]) -> None:
    read, write = os.pipe()
    os.close(read)  # `| head` that has already stopped reading
    try:
        closed = _run_with_stdout(["--pid", str(fake_qemu.pid), "--json", str(tmp_path / "a.json")], fake_gdb, write)
    finally:
        os.close(write)
    assert closed.returncode == 0 and closed.stderr == "", closed.stderr
    assert json.loads((tmp_path / "a.json").read_text())["nodes"][0]["node_name"] == "top"
    with open("/dev/full", "w") as full:
        proc = _run_with_stdout(["--pid", str(fake_qemu.pid), "--json", str(tmp_path / "b.json")], fake_gdb, full)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "iotests-run: cannot write the dump to stdout (No space left on device)\n"
    assert (tmp_path / "b.json").is_file()


# 2. Pids ---------------------------------------------------------------------------------------------

@pytest.mark.process
def test_pids_out_of_range_or_not_numbers_are_one_line(tmp_path: Path, fake_gdb: dict[str, str]) -> None:
    for args in (["--pid=-1"], ["--pid", "0"], ["--pid", "abc"], ["--pid", str(2**31)], ["--pid", "9" * 40],
                 ["--pid", " 5"], ["--pid", "1_0"]):
        one_line_exit_2(run_cli(["block-state", *args], env=fake_gdb), "not a process id (1 to 2147483647)")
    assert not gdb_ran(tmp_path)
    one_line_exit_2(run_cli(["block-state", "--pid", str(2**31 - 1)], env=fake_gdb), "no such process")


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def status(self) -> str:
        return "sleeping"

    def name(self) -> str:
        return "kthreadd"

    def exe(self) -> str:
        return ""

    def cmdline(self) -> list[str]:
        return []


@pytest.mark.unit
def test_a_kernel_thread_is_named_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "Process", FakeProcess)
    monkeypatch.setattr(block_state_command, "_proc_line", lambda pid, name: "2 (kthreadd) S 0 0 0 0 -1 2129984 0")
    with pytest.raises(UsageError, match=r"^--pid 2 is a kernel thread \(kthreadd\), not a QEMU program$"):
        block_state_command._program(2)


@pytest.mark.process
def test_a_zombie_and_a_program_that_is_not_qemu_are_named_so(tmp_path: Path, fake_gdb: dict[str, str]) -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while subprocess.run(["ps", "-o", "stat=", "-p", str(child.pid)], capture_output=True,
                         text=True).stdout.strip()[:1] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        one_line_exit_2(run_cli(["block-state", "--pid", str(child.pid)], env=fake_gdb), "is a zombie")
    finally:
        child.wait()
    line = one_line_exit_2(run_cli(["block-state", "--pid", str(os.getpid())], env=fake_gdb), "not a QEMU program: ")
    assert os.path.basename(sys.executable) in line or "python" in line
    assert not gdb_ran(tmp_path)


@pytest.fixture
def traced(fake_qemu: subprocess.Popen[bytes]) -> Iterator[int]:
    """fake_qemu held by another gdb: its pid."""
    if GDB is None:
        pytest.skip("gdb is not installed")
    holder = subprocess.Popen([GDB, "-batch", "-nx", "-p", str(fake_qemu.pid), "-ex", "python import time",
                               "-ex", "python time.sleep(60)"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while block_state_command._tracer(fake_qemu.pid) != holder.pid and time.monotonic() < deadline:
        time.sleep(0.1)
    assert block_state_command._tracer(fake_qemu.pid) == holder.pid
    yield fake_qemu.pid
    holder.kill()
    holder.wait()


@pytest.mark.process
def test_a_traced_process_is_said_to_be_traced(tmp_path: Path, traced: int, fake_gdb: dict[str, str]) -> None:
    one_line_exit_2(run_cli(["block-state", "--pid", str(traced)], env=fake_gdb), "is already traced by process ")
    assert not gdb_ran(tmp_path)


@pytest.mark.process
def test_when_gdb_cannot_attach_it_is_said_not_no_debug_info(traced: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_state_command, "_tracer", lambda pid: 0)  # as if it became traced after the check
    with pytest.raises(UsageError) as caught:
        block_state_command.main(["--pid", str(traced)])
    message = str(caught.value)
    assert f"qemu-io ({traced}) live: gdb could not attach (process {traced} is already traced by process" in message
    assert "debug info" not in message


@pytest.mark.process
def test_a_gdb_that_does_not_finish_is_a_timeout(tmp_path: Path, fake_qemu: subprocess.Popen[bytes],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    stuck = tmp_path / "gdb"
    stuck.write_text("#!/bin/sh\ntrap '' TERM\nexec sleep 60\n")  # deaf to SIGTERM: SIGKILL ends it
    stuck.chmod(0o755)
    monkeypatch.setattr(block_state_command, "tool", lambda name: str(stuck))
    monkeypatch.setattr(block_state_command, "TIMEOUT_S", 1.0)
    monkeypatch.setattr(blockstate, "GDB_GRACE_S", 1.0)
    start = time.monotonic()
    with pytest.raises(SetupError, match=rf"^qemu-io \({fake_qemu.pid}\) live: gdb did not finish within 1 s; "):
        block_state_command.main(["--pid", str(fake_qemu.pid)])
    assert time.monotonic() - start < 10


@pytest.mark.process
def test_a_process_gdb_left_stopped_is_continued(tmp_path: Path, fake_qemu: subprocess.Popen[bytes],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    stopper = tmp_path / "gdb"
    stopper.write_text(f"#!/bin/sh\nkill -STOP {fake_qemu.pid}\nexec sleep 60\n")
    stopper.chmod(0o755)
    monkeypatch.setattr(block_state_command, "tool", lambda name: str(stopper))
    monkeypatch.setattr(block_state_command, "TIMEOUT_S", 1.0)
    with pytest.raises(SetupError, match="did not finish"):
        block_state_command.main(["--pid", str(fake_qemu.pid)])
    assert not block_state_command._stopped(fake_qemu.pid)
    os.kill(fake_qemu.pid, signal.SIGCONT)


@pytest.mark.process
@needs_gdb
def test_the_walker_refuses_a_program_file_without_process_or_core(tmp_path: Path) -> None:
    out = tmp_path / "state.json"
    subprocess.run([str(GDB), "-batch", "-nx", *blockstate.gdb_commands(out), shutil.which("sleep") or "/bin/sleep"],
                   capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert "no process or core to read" in blockstate.load(out)["error"]


# 3. Cores --------------------------------------------------------------------------------------------

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


GOOD = [(4, 0x1000, 0x200), (1, 0x2000, 0x3000), (1, 0x5000, 0)]


@pytest.mark.unit
@pytest.mark.parametrize("kind", [{}, {"cls": 1, "order": ">"}, {"xnum": True}])
def test_a_whole_core_passes_the_check(tmp_path: Path, kind: dict[str, Any]) -> None:
    core = tmp_path / "core"
    core.write_bytes(elf(GOOD, **kind))
    check_core(core, "--core")


@pytest.mark.unit
def test_cores_that_are_not_or_are_cut_short_are_refused(tmp_path: Path) -> None:
    cases = {
        b"": "is not a core file (empty)",
        b"core dumped\n": "is not a core file (not ELF)",
        gzip.compress(elf(GOOD)): "is gzip-compressed; gunzip it first",
        elf(GOOD, e_type=2): "is an executable, not a core",
        elf(GOOD, e_type=3): "is a shared object or PIE executable, not a core",
        elf(GOOD)[:40]: "is truncated (within its ELF header)",
        elf(GOOD)[:100]: "is truncated (100 bytes; its program headers end at byte 232)",
        elf(GOOD, size=0x4000): "is truncated (16384 bytes; its segments need 20480)",
        elf([(4, 0x1000, 0x10)]): "has no memory segments",
        elf([]): "has no program headers",
        elf(GOOD, xnum=True, size=0x4000): "is truncated",
        b"\x7fELF\x09\x01" + bytes(60): "unknown class or byte order",
    }
    for n, (data, needle) in enumerate(cases.items()):
        core = tmp_path / f"core{n}"
        core.write_bytes(data)
        with pytest.raises(UsageError, match=r"^--core: ") as caught:
            check_core(core, "--core")
        assert needle in str(caught.value), (needle, str(caught.value))


@pytest.mark.unit
def test_only_the_head_of_a_big_core_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GB that takes no room
    head, size = read_head(big, "--core", 4096)
    assert len(head) == 4096 and size == 1 << 30


@pytest.mark.process
def test_bad_cores_are_refused_before_gdb_runs(tmp_path: Path, fake_gdb: dict[str, str]) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "text").write_text("not a core\n")
    (tmp_path / "cut").write_bytes(elf(GOOD, size=0x3000))
    (tmp_path / "core.gz").write_bytes(gzip.compress(elf(GOOD)))
    for name, needle in (("empty", "empty"), ("text", "not ELF"), ("cut", "truncated"), ("core.gz", "gunzip")):
        one_line_exit_2(run_cli(["block-state", "--core", str(tmp_path / name), "--exe", sys.executable],
                                env=fake_gdb), needle)
    assert not gdb_ran(tmp_path)


@pytest.mark.process
@needs_gdb
def test_a_real_core_cut_short_is_refused(tmp_path: Path, fake_qemu: subprocess.Popen[bytes]) -> None:
    gcore = shutil.which("gcore")
    if gcore is None:
        pytest.skip("gdb's gcore is not installed")
    subprocess.run([gcore, "-o", str(tmp_path / "core"), str(fake_qemu.pid)], capture_output=True, check=True,
                   stdin=subprocess.DEVNULL)
    core = tmp_path / f"core.{fake_qemu.pid}"
    check_core(core, "--core")
    with core.open("r+b") as f:
        f.truncate(core.stat().st_size // 2)
    with pytest.raises(UsageError, match="is truncated"):
        check_core(core, "--core")


# 4. Strings from QEMU's memory -----------------------------------------------------------------------

@pytest.mark.unit
def test_text_escapes_control_characters_so_no_line_is_forged() -> None:
    out = blockstate.text(HOSTILE, "Block-layer state of qemu-io (1), live\x1b]0;title\x07")
    assert not any(c in out for c in "\x1b\x9b\x07")
    assert not any(line.startswith("forged") for line in out.splitlines())
    assert "/img/a\\nforged: line\\x1b[2J&b.qcow2" in out
    assert "\\x1b]0;title\\x07" in out.splitlines()[0]
    assert "f\\nx (0x1) at a\\x1b.c:3" in out
    assert "job\\n1: mirror" in out and "thread 1 (qemu\\x1b)" in out
    line = blockstate.summary(HOSTILE, "qemu-io\x1b (1)")
    assert "\n" not in line and "\x1b" not in line and "in flight: write\\x1b 0+512" in line


@pytest.mark.unit
def test_dot_escapes_quotes_backslashes_entities_and_controls() -> None:
    graph = blockstate.dot(HOSTILE, 'title "quoted" \\ <&>')
    assert not any(c in graph for c in "\x1b\x9b")
    assert 'label="title \\"quoted\\" \\\\ &lt;&amp;&gt;"' in graph
    assert '"n\\"&lt;b&gt;\\\\\\\\x1b\\n' in graph  # the node name: n"<b>\ then ESC shown as \x1b
    assert "/img/a\\\\nforged: line\\\\x1b[2J&amp;b.qcow2\\n" in graph


@pytest.mark.process
@needs_dot
def test_a_hostile_filename_still_makes_well_formed_svg() -> None:
    image = blockstate.svg(blockstate.dot(HOSTILE, "t"))
    assert image is not None
    texts = [t.text for t in ET.fromstring(image).iter("{http://www.w3.org/2000/svg}text")]
    assert "/img/a\\nforged: line\\x1b[2J&b.qcow2" in texts
    assert 'n"<b>\\\\x1b' in texts
    assert "job job\\n1" in texts


@pytest.mark.unit
def test_renderers_take_any_document_without_raising(tmp_path: Path) -> None:
    odd: list[Any] = [
        {"nodes": "abc"}, {"nodes": [1]}, {"nodes": [{"children": [None]}]}, {"threads": [{"callers": 5}]},
        state(node(filename=12, node_name=None, children=[{"perm": "RW", "role": None}], requests=[{}])),
        state(node(filename="\ud800 lone surrogate \uffff")),
    ]
    for doc in odd:
        for rendered in (blockstate.text(doc, "t"), blockstate.dot(doc, "t"), blockstate.summary(doc, "q")):
            rendered.encode("utf-8")  # no lone surrogate left
    assert "not a document of the walker" in blockstate.text({"nodes": [1]}, "t")
    assert "\\ud800 lone surrogate \\uffff" in blockstate.text(odd[-1], "t")
    assert "\\\\ud800 lone surrogate \\\\uffff" in blockstate.dot(odd[-1], "t")  # the backslash escaped in DOT


@pytest.mark.unit
def test_load_says_why_there_is_no_document(tmp_path: Path) -> None:
    assert blockstate.load(tmp_path / "none") == {"error": "no block state from gdb (gdb wrote none)"}
    (tmp_path / "bad").write_text("{not json")
    assert "is not JSON" in blockstate.load(tmp_path / "bad")["error"]
    (tmp_path / "deep").write_text("[" * 100_000 + "]" * 100_000)
    assert "is not JSON" in blockstate.load(tmp_path / "deep")["error"]
    (tmp_path / "list").write_text('{"nodes": 3}')
    assert "not a document of the walker" in blockstate.load(tmp_path / "list")["error"]
    (tmp_path / "refused").write_text('{"error": "no all_bdrv_states\\u001b[2J"}')
    assert blockstate.load(tmp_path / "refused") == {"error": "no all_bdrv_states\\x1b[2J"}
    (tmp_path / "fine").write_text(json.dumps(HOSTILE))
    assert blockstate.load(tmp_path / "fine") == HOSTILE  # raw: --json keeps what the walker read


@pytest.mark.process
@needs_gdb
def test_a_run_s_core_cut_short_is_not_walked(tmp_path: Path, fake_qemu: subprocess.Popen[bytes],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    gcore = shutil.which("gcore")
    if gcore is None:
        pytest.skip("gdb's gcore is not installed")
    upper = tmp_path / "upper"
    upper.mkdir()
    subprocess.run([gcore, "-o", str(upper / "core"), str(fake_qemu.pid)], capture_output=True, check=True,
                   stdin=subprocess.DEVNULL)
    core = upper / f"core.{fake_qemu.pid}"
    with core.open("r+b") as f:  # as the kernel leaves it at the core size limit
        f.truncate(core.stat().st_size // 2)
    # gcore writes its notes last, so gdb cannot name the program of a cut gcore; the kernel's come first
    monkeypatch.setattr(diagnostics, "core_origin", lambda *a: (str(tmp_path / "qemu-io"), "SIGSEGV"))
    evidence = examine_cores([core], tmp_path / "diagnostics", tmp_path, 60)
    assert "qemu-io (core-1) block: not read: the core is truncated (" in evidence.summary
    assert "0 nodes" not in evidence.summary
    assert not list((tmp_path / "diagnostics").glob("*block*"))
