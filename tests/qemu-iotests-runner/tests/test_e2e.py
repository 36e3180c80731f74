"""Real iotests on the reference QEMU tree, judged against QEMU's own check."""

from __future__ import annotations

import gzip
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from iotests_run.tree.environment import iotests_environment
from iotests_run.tree.qemu import open_tree
from support import ReferenceTree, history_of_the_suite, run_cli

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
# Quick iotests with all three verdicts on qcow2 and raw: bash and Python, numbered and named.
SAMPLE = ["001", "012", "045", "047", "075", "111", "205", "268", "block-status-cache"]


def bench_module() -> types.ModuleType:
    """tools/bench's code (tools/iotests_tools/bench.py): how it runs check and reads its verdicts."""
    if str(REPO / "tools") not in sys.path:
        sys.path.insert(0, str(REPO / "tools"))
    return importlib.import_module("iotests_tools.bench")


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_same_verdicts_as_check(any_reference_tree: ReferenceTree, tmp_path: Path, fmt: str) -> None:
    bench = bench_module()
    _, check = bench.run_check(str(any_reference_tree.build), fmt, SAMPLE, 2)
    results = tmp_path / "results"
    proc = run_cli(["-f", fmt, *SAMPLE, *any_reference_tree.args(results)])
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads((results / "results.json").read_text())
    ours = {f"{r['format']}-{r['protocol']} {r['test']}": bench.VERDICT_OF_OUTCOME[r["outcome"]] for r in data["runs"]}
    assert len(check) == len(SAMPLE)
    assert bench.differences(check, ours) == []
    assert set(check.values()) >= {"pass", "not run"}


def test_misalign_same_verdicts_as_check(reference_tree: ReferenceTree, tmp_path: Path) -> None:
    """`check -misalign` and `iotests-run --misalign` on a handful of real tests: the same verdicts."""
    bench = bench_module()
    tests = ["001", "012", "045", "075", "block-status-cache"]
    _, check = bench.run_check(str(reference_tree.build), "qcow2", tests, 2, ["-misalign"])
    results = tmp_path / "results"
    proc = run_cli(["--misalign", "-f", "qcow2", *tests, *reference_tree.args(results)])
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads((results / "results.json").read_text())
    assert "--misalign" in data["environment"]["qcow2-file"]["QEMU_IO_OPTIONS"]
    ours = {f"{r['format']}-{r['protocol']} {r['test']}": bench.VERDICT_OF_OUTCOME[r["outcome"]] for r in data["runs"]}
    assert len(check) == len(tests) and bench.differences(check, ours) == []


def test_valgrind_passes_a_real_test_on_a_clean_tree(reference_tree: ReferenceTree, tmp_path: Path) -> None:
    """--valgrind: 001's qemu-io processes under valgrind (VALGRIND_QEMU=y), the limits x10; it passes."""
    results = tmp_path / "results"
    proc = run_cli(["--valgrind", "-f", "raw", "001", *reference_tree.args(results)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((results / "results.json").read_text())
    assert data["environment"]["raw-file"]["VALGRIND_QEMU"] == "y"
    assert [r["outcome"] for r in data["runs"]] == ["pass"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def test_gdb_run_waits_for_a_debugger_and_passes_once_it_continues(any_reference_tree: ReferenceTree,
                                                                    tmp_path: Path) -> None:
    """--gdb as check's -gdb: 238's QEMU starts under gdbserver at GDB_OPTIONS and waits; `gdb -batch -ex 'target
    remote ...' -ex continue` lets it run, and the run passes."""
    if shutil.which("gdbserver") is None or shutil.which("gdb") is None:
        pytest.skip("needs gdbserver and gdb (make gdbserver)")
    address = f"localhost:{_free_port()}"
    results = tmp_path / "results"
    args = ["--gdb", "-f", "raw", "238", *any_reference_tree.args(results)]
    proc = subprocess.Popen([sys.executable, "-m", "iotests_run", *args, *history_of_the_suite(args)],
                            env=dict(os.environ, GDB_OPTIONS=address), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        started = ""
        while "238: started" not in started and (line := proc.stdout.readline()):  # after the plan's lines
            started += line
        assert f"238: started; its QEMU waits for gdb at {address}" in started, started
        time.sleep(5)  # 238 takes about a second; under gdbserver its QEMU has not started yet
        assert proc.poll() is None and not (results / "runs").exists()
        # QEMU gets SIGPIPE when the test closes its end of a socket first (QEMU ignores it; a tracer sees it): a
        # stop there would end gdb -batch with QEMU stopped
        debugger = ["gdb", "-batch", "-nx", "-ex", "set sysroot /", "-ex", "handle SIGPIPE nostop noprint pass",
                    "-ex", f"target remote {address}", "-ex", "continue"]
        deadline = time.monotonic() + 60
        while True:  # until gdbserver listens (it prints nothing we read here)
            attached = subprocess.run(debugger, capture_output=True, text=True, timeout=120)
            if "exited normally" in attached.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "exited normally" in attached.stdout, attached.stdout + attached.stderr
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, started + out
    data = json.loads((results / "results.json").read_text())
    assert data["environment"]["raw-file"]["GDB_OPTIONS"] == address
    assert [(r["test"], r["outcome"]) for r in data["runs"]] == [("238", "pass")]


def test_junit_and_results_json_of_real_runs(reference_tree: ReferenceTree, tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = run_cli(["-f", "qcow2,raw", "001", "045", *reference_tree.args(results)],
                   env=dict(os.environ, SECRET_TOKEN="hunter2-do-not-leak"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((results / "results.json").read_text())
    assert data["complete"] is True
    assert data["qemu"]["version"] == "7.2.0"
    runs = {(r["format"], r["test"]): r for r in data["runs"]}
    assert set(runs) == {("qcow2", "001"), ("qcow2", "045"), ("raw", "001"), ("raw", "045")}
    assert runs[("qcow2", "001")]["outcome"] == "pass" and runs[("qcow2", "001")]["duration_s"] > 0
    assert runs[("qcow2", "045")]["outcome"] == "not-run"
    assert "not suitable" in runs[("qcow2", "045")]["reason"]
    # 045 declares supported_fmts=['raw']: known without starting it, so no artifacts
    assert runs[("qcow2", "045")]["artifacts"] is None and runs[("qcow2", "045")]["duration_s"] == 0
    assert not (results / "runs" / "qcow2-file" / "045").exists()
    assert data["skipped_without_starting"] == 1
    # Only iotests variables are recorded, never the rest of the user's environment.
    env = data["environment"]["qcow2-file"]
    assert env["IMGFMT"] == "qcow2" and "HOME" not in env and "PATH" not in env
    for name in ("results.json", "junit.xml", "summary.txt", "report.html"):
        assert "hunter2-do-not-leak" not in (results / name).read_text()
    root = ET.parse(results / "junit.xml").getroot()
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert set(cases) == {("iotests.qcow2-file", "001"), ("iotests.qcow2-file", "045"),
                          ("iotests.raw-file", "001"), ("iotests.raw-file", "045")}
    assert cases[("iotests.qcow2-file", "001")].get("file") == "tests/qemu-iotests/001"
    assert cases[("iotests.qcow2-file", "045")].find("skipped") is not None
    assert proc.stdout.rstrip().endswith("3 passed, 0 failed, 1 skipped")  # 045 runs on raw only
    page = (results / "report.html").read_text()
    assert page.count('class="cell o-pass"') == 3 and page.count('class="cell o-not-run"') == 1


@pytest.mark.parametrize("fmt", ["qcow2", "raw", "luks", "vmdk"])
def test_environment_equals_checks(any_reference_tree: ReferenceTree, tmp_path: Path, fmt: str) -> None:
    """`check -FMT -- env -0` shows check's environment exactly; ours must carry the same iotests variables."""
    user_env = dict(os.environ, TEST_DIR=str(tmp_path / "t"), SOCK_DIR=str(tmp_path / "s"), MALLOC_PERTURB_="17")
    dump = tmp_path / "env"
    subprocess.run([sys.executable, "check", f"-{fmt}", "--", "sh", "-c", f"env -0 > {dump}"],
                   cwd=any_reference_tree.build / "tests" / "qemu-iotests", env=user_env,
                   capture_output=True, check=True)
    out = dump.read_text()
    theirs = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    tree = open_tree(str(any_reference_tree.source), str(any_reference_tree.build), {}, Path("/"))
    ours = iotests_environment(tree, fmt, "file", python=sys.executable, test_dir=tmp_path / "t",
                               sock_dir=tmp_path / "s", malloc_perturb="17", user_env=user_env)
    added = {k: v for k, v in theirs.items() if os.environ.get(k) != v or k in ours}
    assert {k: theirs.get(k) for k in ours} == ours
    assert set(added) - set(ours) <= {"PWD", "OLDPWD", "TEST_DIR", "SOCK_DIR", "MALLOC_PERTURB_", "SHLVL", "_"}


def test_checks_own_environment_options_equal_checks(any_reference_tree: ReferenceTree, tmp_path: Path) -> None:
    """check's environment options (-nocache/-c, -i, -o, -misalign, -p as --print-qemu, -d, -valgrind, -gdb):
    `check -qcow2 OPTIONS -- env -0`."""
    from iotests_run.cli.options import make_parser, settings_of
    from iotests_run.run.admission import Cpus

    user_env = dict(os.environ, TEST_DIR=str(tmp_path / "t"), SOCK_DIR=str(tmp_path / "s"), MALLOC_PERTURB_="17")
    for check_args, our_args in ((["-nocache", "-i", "native", "-o", "compat=0.10"],
                                  ["--nocache", "-i", "native", "-o", "compat=0.10"]),
                                 (["-c", "writethrough"], ["-c", "writethrough"]),
                                 (["-misalign"], ["--misalign"]),
                                 (["-p", "-d"], ["--print-qemu", "-d"]),
                                 (["-valgrind", "-gdb"], ["--valgrind", "--gdb"])):
        dump = tmp_path / "env"
        subprocess.run([sys.executable, "check", "-qcow2", *check_args, "--", "sh", "-c", f"env -0 > {dump}"],
                       cwd=any_reference_tree.build / "tests" / "qemu-iotests", env=user_env,
                       capture_output=True, check=True)
        theirs = dict(item.split("=", 1) for item in dump.read_text().split("\0") if "=" in item)
        tree = open_tree(str(any_reference_tree.source), str(any_reference_tree.build), {}, Path("/"))
        settings = settings_of(make_parser(Cpus(2, None)).parse_args(our_args))
        ours = iotests_environment(tree, "qcow2", "file", python=sys.executable, test_dir=tmp_path / "t",
                                   sock_dir=tmp_path / "s", malloc_perturb="17", user_env=user_env,
                                   settings=settings)
        assert {k: theirs.get(k) for k in ours} == ours


def test_tree_found_from_inside_the_build(reference_tree: ReferenceTree, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("QEMU_SOURCE", "QEMU_BUILD")}
    env["IOTESTS_RUN_CACHE"] = str(tmp_path / "no-cache")
    proc = run_cli(["001", "--results", str(tmp_path / "r")], env=env,
                   cwd=reference_tree.build / "tests" / "qemu-iotests")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["qemu"]["build"] == str(reference_tree.build.resolve())
    assert data["qemu"]["source"] == str(reference_tree.source.resolve())


def test_broken_build_is_a_one_line_error(reference_tree: ReferenceTree, tmp_path: Path) -> None:
    broken = tmp_path / "build"
    broken.mkdir()
    for name in ("qemu-img", "qemu-io", "qemu-system-x86_64", "storage-daemon"):
        (broken / name).symlink_to(reference_tree.build / name)
    proc = run_cli(["001", "--qemu-source", str(reference_tree.source), "--qemu-build", str(broken),
                    "--results", str(tmp_path / "r")])
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"iotests-run: QEMU build lacks {broken / 'qemu-nbd'}"


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_static_skips_match_what_running_decides(any_reference_tree: ReferenceTree, tmp_path: Path,
                                                 fmt: str) -> None:
    """Runs skipped from declarations get the verdict and reason that starting them gives."""
    def outcomes(extra: list[str]) -> dict[str, tuple[str, str]]:
        results = tmp_path / ("all" if extra else "static")
        run_cli(["-f", fmt, *SAMPLE, *extra, *any_reference_tree.args(results)])
        data = json.loads((results / "results.json").read_text())
        return {r["test"]: (r["outcome"], r["reason"]) for r in data["runs"]}

    static, started = outcomes([]), outcomes(["--no-static-skip"])
    assert static == started
    assert any(outcome == "not-run" for outcome, _ in static.values())


def test_real_qemu_hang_and_daemon_leak(reference_tree: ReferenceTree, tmp_path: Path) -> None:
    """Fake iotests driving the real binaries: a qemu-system -S that sits there, a qemu-nbd --fork left behind."""
    from support import make_fake_tree

    tree = make_fake_tree(tmp_path / "tree")
    (tree.source / "scripts").symlink_to(reference_tree.source / "scripts")  # qemu-gdb.py
    tree.add_test("001", '"$QEMU_PROG" $QEMU_OPTIONS -S &\nwait\n', out="")
    tree.add_test("002", '"$QEMU_IMG_PROG" create -f qcow2 "$TEST_DIR/t.qcow2" 1M >/dev/null\n'
                         '"$QEMU_NBD_PROG" --fork -k "$SOCK_DIR/nbd.sock" -f qcow2 "$TEST_DIR/t.qcow2"\n'
                         "echo started\n", out="started\n")
    tree.add_test("003", '"$QEMU_IMG_PROG" create -f raw "$TEST_DIR/r.img" 1M >/dev/null\n'
                         '"$QEMU_IO_PROG" -f raw -c "sigraise 11" "$TEST_DIR/r.img"\n', out="")
    results = tmp_path / "results"
    secrets = {"CI_JOB_TOKEN": "ci-job-token-0451", "GITLAB_TOKEN": "glpat-0451", "REGISTRY_PASSWORD": "hunter0451",
               "AWS_SECRET_ACCESS_KEY": "aws-secret-0451"}
    proc = run_cli(["--qemu-source", str(tree.source), "--qemu-build", str(reference_tree.build),
                    "--results", str(results), "--hang-timeout", "3"], env=dict(os.environ, **secrets))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "withheld from the tests" in proc.stdout and "CI_JOB_TOKEN" in proc.stdout
    runs = {r["test"]: r for r in json.loads((results / "results.json").read_text())["runs"]}
    assert runs["001"]["outcome"] == "hang"
    gdb = next((results / "runs/qcow2-file/001/diagnostics").glob("gdb-*-qemu-system-x86_64.txt")).read_text()
    assert "main_loop_wait" in gdb and "qemu_main_loop" in gdb
    assert "=== qemu bt (coroutine-aware) ===" in gdb
    assert "qemu_main_loop" in gdb.split("=== qemu bt (coroutine-aware) ===")[1]
    error = next(c for c in ET.parse(results / "junit.xml").getroot().iter("testcase") if c.get("name") == "001")
    assert "main_loop_wait" in (error.findtext("error") or "")
    assert runs["002"]["outcome"] == "pass"
    assert any("qemu-nbd" in p for p in runs["002"]["leaked"])
    # qemu-io raising SIGSEGV: a crash, its core kept with a backtrace through qemu-io's own code
    assert runs["003"]["outcome"] == "crash"
    if "core dumps kept" in proc.stdout:  # root, and a core_pattern that writes a file (Debian's `core`)
        backtrace = (results / "runs/qcow2-file/003/cores/core-1-qemu-io-backtrace.txt").read_text()
        assert "sigraise_f" in backtrace and "qemuio_command" in backtrace
        assert "qemu-io died of SIGSEGV" in runs["003"]["diagnostics"]
        core = gzip.decompress((results / "runs/qcow2-file/003/cores/core-1.gz").read_bytes())
        assert b"QEMU_IO_PROG=" in core  # the environment is in the core ...
        assert not [v for v in secrets.values() if v.encode() in core]  # ... but no credential
    else:
        assert "no core dumps: " in proc.stdout
    everything = b"".join(p.read_bytes() for p in results.rglob("*") if p.is_file() and p.suffix != ".gz")
    assert not [v for v in secrets.values() if v.encode() in everything]
    assert not list(tree.iotests.glob("core*"))
    assert subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True).stdout == b""


def test_a_daemon_stopped_as_its_test_ends_is_no_leak(reference_tree: ReferenceTree, tmp_path: Path) -> None:
    """nbd-qemu-allocation sends its qemu-nbd SIGTERM and exits at once; run alone under check nothing survives."""
    proc = run_cli(["nbd-qemu-allocation", "-f", "qcow2", *reference_tree.args(tmp_path / "results")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((tmp_path / "results" / "results.json").read_text())["runs"][0]
    assert (run["outcome"], run["leaked"]) == ("pass", [])


def test_cases_not_run_are_kept_as_check_shows_them(reference_tree: ReferenceTree, tmp_path: Path) -> None:
    """297 skips its linter cases where pylint and mypy are missing (iotests.case_notrun): check prints them.

    On 7.2 only: 10.0's 297 runs the linters as modules of $PYTHON, which is the runner's own
    interpreter (with this project's mypy) here and the system's under check.
    """
    any_reference_tree = reference_tree
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    env["PATH"] = "/usr/bin:/bin"  # the system's Python, without this project's pylint or mypy
    check = subprocess.run(["./check", "-qcow2", "297"], cwd=any_reference_tree.build / "tests" / "qemu-iotests",
                           env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    cases = [line for line in check.stdout.splitlines() if "[case not run]" in line]
    assert cases, check.stdout
    results = tmp_path / "results"
    proc = run_cli(["297", "-f", "qcow2", *any_reference_tree.args(results)], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((results / "results.json").read_text())["runs"][0]
    assert run["outcome"] == "pass" and run["casenotrun"].splitlines() == cases


FUSE_SAMPLE = ["001", "002", "004", "007", "308"]


def test_fuse_protocol_and_exports_as_check(any_reference_tree: ReferenceTree, tmp_path: Path) -> None:
    """The reference trees are built with FUSE exports: -p fuse runs, and 308 (FUSE exports over file) too."""
    config = (any_reference_tree.build / "config-host.h").read_text()
    assert "#define CONFIG_FUSE" in config, "tools/build-reference-qemu builds with --enable-fuse"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/fuse on this machine (iotests-run would say so; check's tests would fail)")
    bench = bench_module()
    for proto in ("fuse", "file"):
        _, check = bench.run_check(str(any_reference_tree.build), "raw", [f"-{proto}", *FUSE_SAMPLE], 2)
        check = {k.replace("raw-file", f"raw-{proto}"): v for k, v in check.items()}
        results = tmp_path / proto
        proc = run_cli(["-f", "raw", "-p", proto, *FUSE_SAMPLE, *any_reference_tree.args(results)])
        assert proc.returncode in (0, 1), proc.stderr
        data = json.loads((results / "results.json").read_text())
        ours = {f"raw-{proto} {r['test']}": bench.VERDICT_OF_OUTCOME[r["outcome"]] for r in data["runs"]}
        assert len(check) == len(FUSE_SAMPLE) and bench.differences(check, ours) == []
        assert "pass" in ours.values()
    assert ours["raw-file 308"] == "pass"  # FUSE exports made and removed inside the run
    assert subprocess.run(["grep", "-c", str(tmp_path), "/proc/self/mountinfo"],
                          capture_output=True, text=True).stdout.strip() == "0"


BLKDEBUG_IMAGE = ('json:{"driver":"qcow2","node-name":"top","file":{"driver":"blkdebug","node-name":"dbg",'
                  '"image":{"driver":"file","node-name":"proto","filename":"\'"$TEST_DIR"\'/t.qcow2"}}}')
# A write suspended by blkdebug, then a flush that drains and so waits for it forever.
SUSPENDED = ('"$QEMU_IMG_PROG" create -f qcow2 "$TEST_DIR/t.qcow2" 1M >/dev/null\n'
             '"$QEMU_IO_PROG" -c "break write_aio A" -c "aio_write 0 64k" -c "wait_break A" -c flush '
             f"'{BLKDEBUG_IMAGE}' TAIL\n")


def test_block_state_of_a_hung_and_of_a_crashed_qemu_io(any_reference_tree: ReferenceTree, tmp_path: Path) -> None:
    """The graph, the request in flight and its coroutine's frames, from the live process and from its core."""
    from support import make_fake_tree

    tree = make_fake_tree(tmp_path / "tree")
    tree.add_test("001", SUSPENDED.replace("TAIL", ""), out="")
    tree.add_test("002", SUSPENDED.replace("TAIL", "&\npid=$!\nsleep 3\nkill -ABRT $pid\nwait $pid\n"), out="")
    results = tmp_path / "results"
    proc = run_cli(["--qemu-source", str(tree.source), "--qemu-build", str(any_reference_tree.build),
                    "--results", str(results), "--hang-timeout", "3"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    runs = {r["test"]: r for r in json.loads((results / "results.json").read_text())["runs"]}
    assert runs["001"]["outcome"] == "hang"
    folders = {"001": results / "runs/qcow2-file/001/diagnostics"}
    if "core dumps kept" in proc.stdout:
        assert runs["002"]["outcome"] == "crash", runs["002"]
        folders["002"] = results / "runs/qcow2-file/002/cores"
    for test, folder in folders.items():
        text = next(folder.glob("*block*.txt")).read_text()
        assert '"top" qcow2' in text and '"dbg" blkdebug' in text and '"proto" file' in text, text
        assert 'child file -> "dbg"' in text and 'child image -> "proto"' in text
        assert 'parents: "top" (file)' in text and 'parents: "dbg" (image)' in text
        assert "parents: backend (anonymous) (root)" in text
        assert "request write 0+65536" in text
        request = text.split("request write 0+65536")[1]
        assert "blkdebug_debug_event" in request or "blkdebug_co_debug_event" in request, request
        graph = next(folder.glob("*block*.dot")).read_text()
        assert graph.count("->") == 3 and "write 0+65536" in graph
        assert 'block: 3 nodes, 1 request in flight: write 0+65536 on node "top" <- blkdebug' \
            in str(runs[test]["diagnostics"]), runs[test]["diagnostics"]
        if shutil.which("dot"):
            assert next(folder.glob("*block*.svg")).read_text().lstrip().startswith(("<?xml", "<svg"))
    if not shutil.which("dot"):
        return
    # report.html shows the graph in the hung run's entry: the node with the request in flight painted red
    from test_html_report import _browser, _colours, _rgb

    page = results / "report.html"
    dom = _browser(page, tmp_path / "profile", "--dump-dom")
    assert '<img src="runs/qcow2-file/001/diagnostics/block-' in dom.stdout
    shot = tmp_path / "report.png"
    _browser(page, tmp_path / "profile", "--window-size=1000,2400", f"--screenshot={shot}")
    assert _rgb("#f28b82") in _colours(shot)  # no failed cell here (a hang and a crash): the graph's node


def test_block_state_command_on_a_live_qemu_io_and_on_its_core(any_reference_tree: ReferenceTree,
                                                              tmp_path: Path) -> None:
    build = any_reference_tree.build
    image = tmp_path / "t.qcow2"
    subprocess.run([str(build / "qemu-img"), "create", "-f", "qcow2", str(image), "1M"], check=True,
                   capture_output=True)
    spec = BLKDEBUG_IMAGE.replace("'\"$TEST_DIR\"'", str(tmp_path))
    qemu_io = subprocess.Popen([str(build / "qemu-io"), "-c", "break write_aio A", "-c", "aio_write 0 64k",
                                "-c", "wait_break A", "-c", "flush", spec],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)  # the write reaches the breakpoint, the flush starts draining
        dot, svg = tmp_path / "g.dot", tmp_path / "g.svg"
        live = run_cli(["block-state", "--pid", str(qemu_io.pid), "--dot", str(dot)]
                       + (["--svg", str(svg)] if shutil.which("dot") else []))
        assert live.returncode == 0, live.stderr
        assert "request write 0+65536" in live.stdout and 'child file -> "dbg"' in live.stdout
        assert live.stdout.splitlines()[-1].startswith(f"qemu-io ({qemu_io.pid}) block: 3 nodes, 1 request")
        assert dot.read_text().count("->") == 3
        assert not shutil.which("dot") or "<svg" in svg.read_text()
        core = tmp_path / "core"
        subprocess.run(["gcore", "-o", str(core), str(qemu_io.pid)], check=True, capture_output=True,
                       stdin=subprocess.DEVNULL)
    finally:
        qemu_io.kill()
        qemu_io.wait()
    written = next(tmp_path.glob("core.*"))
    from_core = run_cli(["block-state", "--core", str(written)])
    assert from_core.returncode == 0, from_core.stderr
    assert "request write 0+65536" in from_core.stdout
    request = from_core.stdout.split("request write 0+65536")[1]
    assert "blkdebug_debug_event" in request or "blkdebug_co_debug_event" in request
    stripped = tmp_path / "qemu-io-stripped"
    subprocess.run(["strip", "-o", str(stripped), str(build / "qemu-io")], check=True)
    bad = {
        "--pid 999999999": ("no such process",),
        f"--pid {os.getpid()}": ("not a QEMU program",),
        f"--core {tmp_path}/nothing": ("no such file",),
        f"--core {written} --exe {stripped}": ("no debug info",),
        f"--pid {os.getpid()} --exe {stripped}": ("--exe goes with --core",),
        "": ("--pid", "--core"),
    }
    for args, needles in bad.items():
        proc = run_cli(["block-state", *args.split()])
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, (args, proc.stderr)
        assert all(n in proc.stderr for n in needles), (args, proc.stderr)


# A mirror job copying into a throttled target (4 KiB/s): it runs for minutes, and the VM is otherwise idle.
THROTTLED_MIRROR = r"""
"$QEMU_IMG_PROG" create -f qcow2 "$TEST_DIR/src.qcow2" 1M >/dev/null
"$QEMU_IMG_PROG" create -f qcow2 "$TEST_DIR/dst.qcow2" 1M >/dev/null
"$QEMU_IO_PROG" -f qcow2 -c "write -P 7 0 1M" "$TEST_DIR/src.qcow2" >/dev/null
file() { echo '{"driver":"file","filename":"'"$TEST_DIR/$1"'"}'; }
{
  echo '{"execute":"qmp_capabilities"}'
  echo '{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"tg","limits":{"bps-total":4096}}}'
  echo '{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"src","file":'"$(file src.qcow2)"'}}'
  echo '{"execute":"blockdev-add","arguments":{"driver":"throttle","node-name":"thr","throttle-group":"tg",
         "file":{"driver":"qcow2","node-name":"dst","file":'"$(file dst.qcow2)"'}}}'
  echo '{"execute":"blockdev-mirror","arguments":{"job-id":"mirror0","device":"src","target":"thr","sync":"full"}}'
  sleep 3600
} | "$QEMU_PROG" $QEMU_OPTIONS -qmp stdio >/dev/null
"""


def test_block_state_shows_a_mirror_job_in_a_hung_qemu_system(any_reference_tree: ReferenceTree,
                                                                tmp_path: Path) -> None:
    from support import make_fake_tree

    tree = make_fake_tree(tmp_path / "tree")
    tree.add_test("001", THROTTLED_MIRROR, out="")
    results = tmp_path / "results"
    proc = run_cli(["--qemu-source", str(tree.source), "--qemu-build", str(any_reference_tree.build),
                    "--results", str(results), "--hang-timeout", "4"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    run = json.loads((results / "results.json").read_text())["runs"][0]
    assert run["outcome"] == "hang", run
    folder = results / "runs/qcow2-file/001/diagnostics"
    text = next(folder.glob("block-*-qemu-system-*.txt")).read_text()
    # running while it copies, ready once it has (a mirror then waits for block-job-complete for ever)
    assert "mirror0: mirror, running" in text or "mirror0: mirror, ready" in text, text
    assert '"src" qcow2' in text and '"thr" throttle' in text and '"dst" qcow2' in text
    jobs = text.split("Jobs (1):")[1]
    assert '-> "thr"' in jobs or '-> "dst"' in jobs, jobs
    graph = next(folder.glob("block-*-qemu-system-*.dot")).read_text()
    assert "shape=hexagon" in graph and "job mirror0" in graph
    assert re.search(r"job mirror0 \(mirror, (running|ready)\)", str(run["diagnostics"])), run["diagnostics"]


def test_repeated_copies_of_real_iotests_run_side_by_side(any_reference_tree: ReferenceTree, tmp_path: Path) -> None:
    """Copies of one test at once do not collide (each has its own folders, sockets and network)."""
    results = tmp_path / "results"
    proc = run_cli(["001", "203", "-f", "qcow2", "--repeat", "8", "--fixed-jobs", "-j", "8",
                    *any_reference_tree.args(results)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((results / "results.json").read_text())
    assert len(data["runs"]) == 16 and {r["outcome"] for r in data["runs"]} == {"pass"}
    assert {(t["test"], t["attempts"], t["failed"]) for t in data["repeats"]} == {("001", 8, 0), ("203", 8, 0)}
    assert "qcow2-file 203: 8 runs, 0 failed (0.0%)" in proc.stdout
