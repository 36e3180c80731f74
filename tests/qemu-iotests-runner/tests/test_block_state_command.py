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
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from iotests_run.debug import block_state_command, blockstate, cores, gdb
from iotests_run.debug.cores import check_core, examine_cores
from iotests_run.errors import SetupError, UsageError
from support import (
    GOOD_SEGMENTS,
    HOSTILE_STATE,
    Completed,
    block_node,
    block_state,
    elf,
    needs_dot,
    run_cli,
    small_tmpfs,
)

GDB = shutil.which("gdb")


needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed")


FAKE_GDB = """#!/bin/sh
echo "$*" >> "$FAKE_GDB_LOG"
for a in "$@"; do case "$a" in "iotests-block-state "*) out="${a#iotests-block-state }";; esac; done
[ -n "$out" ] && cp "$FAKE_STATE" "$out"
exit 0
"""


@pytest.fixture
def fake_gdb(tmp_path: Path) -> dict[str, str]:
    """The environment that puts the fake gdb first on PATH, its log and the document it hands over."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "gdb").write_text(FAKE_GDB)
    (folder / "gdb").chmod(0o755)
    (tmp_path / "state.json").write_text(json.dumps(block_state(block_node())))
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
    Path(fake_gdb["FAKE_STATE"]).write_text(json.dumps(HOSTILE_STATE))
    out = {kind: tmp_path / f"g.{kind}" for kind in ("dot", "svg", "json")}
    (tmp_path / "g.dot").write_text("an old graph")  # replaced whole
    proc = run_cli(["block-state", "--pid", str(fake_qemu.pid), "--dot", str(out["dot"]), "--svg", str(out["svg"]),
                    "--json", str(out["json"])], env=fake_gdb)
    assert proc.returncode == 0, proc.stderr
    assert out["dot"].read_text().startswith("digraph block {")
    ET.parse(out["svg"])
    assert json.loads(out["json"].read_text()) == HOSTILE_STATE
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
    monkeypatch.setattr(block_state_command, "_walk", lambda *a: block_state(block_node()))
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
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        subprocess.run(f"cat /dev/zero > {disk}/filler", shell=True, capture_output=True)
        proc = run_cli(["block-state", "--pid", str(fake_qemu.pid), "--json", str(disk / "g.json")], env=fake_gdb)
        one_line_exit_2(proc, f"--json {disk}/g.json: cannot write it")
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


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
    monkeypatch.setattr(gdb, "GDB_GRACE_S", 1.0)
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
    subprocess.run(gdb.argv(str(GDB), gdb.block_state_commands(out), [shutil.which("sleep") or "/bin/sleep"]),
                   capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert "no process or core to read" in blockstate.load(out)["error"]


@pytest.mark.process
def test_bad_cores_are_refused_before_gdb_runs(tmp_path: Path, fake_gdb: dict[str, str]) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "text").write_text("not a core\n")
    (tmp_path / "cut").write_bytes(elf(GOOD_SEGMENTS, size=0x3000))
    (tmp_path / "core.gz").write_bytes(gzip.compress(elf(GOOD_SEGMENTS)))
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
    monkeypatch.setattr(cores, "core_origin", lambda *a: (str(tmp_path / "qemu-io"), "SIGSEGV"))
    evidence = examine_cores([core], tmp_path / "diagnostics", tmp_path, 60)
    assert "qemu-io (core-1) block: not read: the core is truncated (" in evidence.summary
    assert "0 nodes" not in evidence.summary
    assert not list((tmp_path / "diagnostics").glob("*block*"))
