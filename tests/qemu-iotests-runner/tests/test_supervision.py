"""Timeouts, hangs, crashes and leaks, with fake iotests run through the real runner."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import psutil
import pytest

from support import FakeTree, run_cli

pytestmark = pytest.mark.process


PORT_TEST = """\
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 10809))
s.listen()
time.sleep(2)
print("bound")
"""


STUCK_PYTHON = """\
import time

def wait_for_the_job_that_never_ends():
    time.sleep(3600)

wait_for_the_job_that_never_ends()
"""


# A setsid child left running; the test waits until it really is `sleep 3600` before it exits.
LEAKER = """\
setsid sleep 3600 &
until [ "$(tr '\\0' ' ' < /proc/$!/cmdline 2>/dev/null)" = "sleep 3600 " ]; do sleep 0.05; done
echo ok
"""


# A daemon told to stop as the test ends, which takes half a second to go (as nbd-qemu-allocation's qemu-nbd).
STOPPING = """\
setsid sh -c 'trap "sleep 0.5; exit 0" TERM; while :; do sleep 0.1; done' &
sleep 0.3
kill -TERM $!
echo ok
"""

# A Python test whose child dies of SIGSEGV (as a QEMU would) and which then waits for it forever.
DIES_THEN_WAITS = """\
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
time.sleep(3600)
"""

# name: (body, reference output, python?)
FAKES: dict[str, tuple[str, str, bool]] = {
    "001": ("echo ok\n", "ok\n", False),                                   # pass
    "002": ("echo other\n", "ok\n", False),                                # output mismatch
    "003": ("echo ok; exit 4\n", "ok\n", False),                           # non-zero exit
    "004": ('echo "not here" > "$TEST_DIR/004.notrun"\n', "", False),      # not run
    "005": ("sleep 3600\n", "", False),                                    # hang
    "006": (LEAKER, "ok\n", False),                                       # passes but leaks a setsid child
    "007": ("while :; do :; done\n", "", False),                           # busy loop: timeout, not hang
    "008": ("trap '' TERM\nsleep 3600 & wait; wait; wait\n", "", False),   # ignores SIGTERM
    "009": ("echo before\nkill -SEGV $$\n", "before\n", False),            # crash
    "010": ("head -c 60000000 /dev/zero | tr '\\0' x\n", "", False),      # 60 MB of output
    "011": ("printf 'bad \\xff\\xfe \\x01\\x02 \\x1b[31m\\n'\n", "", False),  # neither UTF-8 nor XML
    "012": (STUCK_PYTHON, "", True),                                       # Python stuck in a sleep
    "013": (PORT_TEST, "bound\n", True),                                   # the same TCP port ...
    "014": (PORT_TEST, "bound\n", True),                                   # ... twice at once
    "015": (STOPPING, "ok\n", False),                                     # its daemon is on its way out
    "016": (DIES_THEN_WAITS, "", True),                                    # its QEMU crashed, it waits on
    "017": ("sh -c 'kill -SEGV $$'\nsleep 3600\n", "", False),             # the same in bash
}


EXPECTED = {"001": "pass", "002": "fail", "003": "fail", "004": "not-run", "005": "hang", "006": "pass",
            "007": "timeout", "008": "hang", "009": "crash", "010": "fail", "011": "fail", "012": "hang",
            "013": "pass", "014": "pass", "015": "pass", "016": "crash", "017": "crash"}


def marker_processes(marker: str) -> list[int]:
    found = []
    for pid in psutil.pids():
        try:
            if any(marker in v for v in psutil.Process(pid).environ().values()):
                found.append(pid)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def outcome_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, str]:
    from support import make_fake_tree

    top = tmp_path_factory.mktemp("set")
    tree = make_fake_tree(top)
    for name, (body, out, python) in FAKES.items():
        tree.add_test(name, body, out=out, python=python)
    results = top / "results"
    start = time.monotonic()
    env = dict(os.environ, FAKE_SET_MARKER="fake-set-" + top.name)
    proc = subprocess.run([sys.executable, "-m", "iotests_run", "-j", str(len(FAKES)), "--hang-timeout", "5",
                           "--timeout", "12", "--grace", "2", "--still-running-every", "2", *tree.args(results)],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    return results, time.monotonic() - start, proc.stdout


def outcomes(results: Path) -> dict[str, dict[str, Any]]:
    return {r["test"]: r for r in json.loads((results / "results.json").read_text())["runs"]}


def test_every_fake_gets_its_outcome(outcome_set: tuple[Path, float, str]) -> None:
    results, _, _ = outcome_set
    assert {t: r["outcome"] for t, r in outcomes(results).items()} == EXPECTED


def test_nothing_is_left_behind(outcome_set: tuple[Path, float, str]) -> None:
    results, _, _ = outcome_set
    assert marker_processes("fake-set-" + results.parent.name) == []


def test_the_set_takes_about_the_hang_timeout_not_the_hard_timeout(outcome_set: tuple[Path, float, str]) -> None:
    _, wall, _ = outcome_set
    assert wall < 12 + 2 + 10  # the busy loop needs its 12 s timeout; hangs end after 5 s + diagnostics


def test_hang_diagnostics(outcome_set: tuple[Path, float, str]) -> None:
    results, _, _ = outcome_set
    run = outcomes(results)["005"]
    assert "no CPU and no output for 5 s" in str(run["reason"])
    processes = (results / "runs/qcow2-file/005/diagnostics/processes.txt").read_text()
    assert "sleep 3600" in processes
    stack = next((results / "runs/qcow2-file/012/diagnostics").glob("py-spy-*.txt")).read_text()
    assert "wait_for_the_job_that_never_ends" in stack


def test_leak_is_reported_and_killed(outcome_set: tuple[Path, float, str]) -> None:
    results, _, stdout = outcome_set
    leaked = (results / "runs/qcow2-file/006/leaked.txt").read_text()
    assert "sleep 3600" in leaked
    assert "Leaked processes" in stdout and "sleep 3600" in stdout
    root = ET.parse(results / "junit.xml").getroot()
    case = next(c for c in root.iter("testcase") if c.get("name") == "006")
    assert "sleep 3600" in (case.findtext("system-err") or "")


def test_a_process_on_its_way_out_is_no_leak(outcome_set: tuple[Path, float, str]) -> None:
    results, _, _ = outcome_set
    assert outcomes(results)["015"]["leaked"] == []
    assert not (results / "runs/qcow2-file/015").exists()


def test_crash_and_timeout_reasons(outcome_set: tuple[Path, float, str]) -> None:
    results, _, _ = outcome_set
    runs = outcomes(results)
    assert runs["009"]["reason"] == "the test died of SIGSEGV"
    assert "after 12 s" in str(runs["007"]["reason"])


def test_a_crash_the_test_then_waits_for_is_a_crash_called_early(outcome_set: tuple[Path, float, str]) -> None:
    results, _, _ = outcome_set
    runs = outcomes(results)
    for name in ("016", "017"):
        assert "died of SIGSEGV" in str(runs[name]["reason"]), runs[name]
        assert "the test then waited 5 s with no CPU and no output" in str(runs[name]["reason"])
        assert float(str(runs[name]["duration_s"])) < 12  # not the timeout


def _cores_possible() -> bool:
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    return os.geteuid() == 0 and not pattern.startswith("|") and "/" not in pattern


def test_crash_keeps_the_core_and_its_backtrace(outcome_set: tuple[Path, float, str]) -> None:
    results, _, stdout = outcome_set
    iotests = results.parent / "src" / "tests" / "qemu-iotests"
    assert not list(iotests.glob("core*"))  # never in the tree, whatever happens
    if not _cores_possible():  # not root, or core_pattern pipes cores elsewhere: said at start
        assert "no core dumps: " in stdout
        return
    assert "core dumps kept" in stdout
    cores = results / "runs/qcow2-file/009/cores"
    assert gzip.decompress((cores / "core-1.gz").read_bytes())[:4] == b"\x7fELF"
    assert not (cores / "core-1").exists()
    backtrace = (cores / "core-1-bash-backtrace.txt").read_text()
    assert "#0 " in backtrace and "=== all threads ===" in backtrace
    run = outcomes(results)["009"]
    assert "bash died of SIGSEGV, core kept (core-1.gz)" in str(run["diagnostics"])
    assert "runs/qcow2-file/009/cores/core-1.gz" in run["attachments"]


def test_junit_stays_valid_and_small(outcome_set: tuple[Path, float, str]) -> None:
    results, _, _ = outcome_set
    path = results / "junit.xml"
    assert path.stat().st_size < 30_000_000
    root = ET.parse(path).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    error = cases["005"].find("error")
    assert error is not None and error.text is not None
    assert "[[ATTACHMENT|" in (cases["005"].findtext("system-out") or "")
    assert cases["009"].find("error") is not None


def test_still_running_is_named(outcome_set: tuple[Path, float, str]) -> None:
    _, _, stdout = outcome_set
    assert "still running: qcow2-file 00" in stdout


def test_runner_killed_with_sigkill_takes_its_runs_along(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fake_tree.add_test("002", f"setsid sleep 3600 &\nsleep 3600 &\ntouch {tmp_path}/go\nsleep 3600\n", out="")
    results = tmp_path / "results"
    env = dict(os.environ, KILL_MARKER="kill-" + tmp_path.name)
    runner = subprocess.Popen([sys.executable, "-m", "iotests_run", "-j", "2", *fake_tree.args(results)],
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (tmp_path / "go").exists() or not (results / "junit.xml").exists() or \
            '"001"' not in (results / "results.json").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(marker_processes("kill-" + tmp_path.name)) >= 4
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.monotonic() + 10
    while marker_processes("kill-" + tmp_path.name):
        assert time.monotonic() < deadline, "processes of the killed runner survived"
        time.sleep(0.1)
    cases = [c.get("name") for c in ET.parse(results / "junit.xml").getroot().iter("testcase")]
    assert cases == ["001"]


# A process waiting in state D: a vfork parent until its child (which sleeps) exits.
VFORK_WAIT = "#include <unistd.h>\nint main(void) { if (vfork() == 0) { sleep(3600); _exit(0); } return 0; }\n"


@pytest.mark.parametrize("stuck_in", ["sleep", "vfork"])
def test_a_run_that_passed_quickly_before_is_a_hang_sooner_unless_it_waits_for_a_disk(
        fake_tree: FakeTree, tmp_path: Path, stuck_in: str) -> None:
    """Its duration history says it passed in well under a second: idle for 10 s it is a hang (--hang-factor), with
    that reason; a thread in state D (as when a slow disk answers) keeps --hang-timeout's limit."""
    stuck = tmp_path / "stuck"
    command = "sleep 3600"
    if stuck_in == "vfork":
        cc = shutil.which("cc") or pytest.skip("no C compiler")
        (tmp_path / "vfork.c").write_text(VFORK_WAIT)
        subprocess.run([cc, "-o", str(tmp_path / "vfork-wait"), str(tmp_path / "vfork.c")], check=True)
        command = str(tmp_path / "vfork-wait")
    fake_tree.add_test("001", f'if [ -e "{stuck}" ]; then {command}; fi\necho ok\n', out="ok\n")
    args = ["-f", "qcow2", "001", "--hang-timeout", "18", "--history", str(tmp_path / "d.json")]
    assert run_cli([*args, *fake_tree.args(tmp_path / "r1")]).returncode == 0
    stuck.touch()
    proc = run_cli([*args, *fake_tree.args(tmp_path / "r2")])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    run = outcomes(tmp_path / "r2")["001"]
    assert run["outcome"] == "hang"
    if stuck_in == "sleep":
        assert "no CPU and no output for 10 s (--hang-factor 5 x " in str(run["reason"])
        assert float(str(run["duration_s"])) < 18
    else:
        assert "no CPU and no output for 18 s (--hang-timeout)" in str(run["reason"])
    assert command in (tmp_path / "r2/runs/qcow2-file/001/diagnostics/processes.txt").read_text()
