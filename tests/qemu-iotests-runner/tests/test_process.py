"""Fake iotests run through the real runner: its own machinery, process by process."""

from __future__ import annotations

import html
import json
import os
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


def runs_by_test(results: Path) -> dict[tuple[str, str], dict[str, Any]]:
    data = json.loads((results / "results.json").read_text())
    return {(r["format"], r["test"]): r for r in data["runs"]}


def test_verdicts_artifacts_and_reports(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", 'echo "hello $IMGFMT"\n', out="hello qcow2\n")
    fake_tree.add_test("002", "echo changed\n", out="original\n")
    fake_tree.add_test("003", "echo partial; exit 3\n", out="partial\n")
    fake_tree.add_test("004", 'echo "not for $IMGFMT" > "$TEST_DIR/004.notrun"\n', out="")
    fake_tree.add_test("005", "echo python\n", out=None)  # no reference output: not run, never started
    fake_tree.add_test("tests/named", 'echo "$(basename "$PWD")"\n', out="tests\n")
    results = tmp_path / "results"
    proc = run_cli(["-g", "quick", "--junit", str(tmp_path / "copy.xml"), *fake_tree.args(results)])
    assert proc.returncode == 1, proc.stderr
    runs = runs_by_test(results)
    assert {k[1]: r["outcome"] for k, r in runs.items()} == {
        "001": "pass", "002": "fail", "003": "fail", "004": "not-run", "005": "not-run", "named": "pass"}
    assert runs[("qcow2", "003")]["reason"] == "failed, exit status 3"
    assert runs[("qcow2", "004")]["reason"] == "not for qcow2"
    assert str(runs[("qcow2", "005")]["reason"]).startswith("No qualified output")
    # artifacts: kept for anything but a pass, with output, diff and the TEST_DIR
    assert runs[("qcow2", "001")]["artifacts"] is None
    assert not (results / "runs" / "qcow2-file" / "001").exists()
    kept = results / str(runs[("qcow2", "002")]["artifacts"])
    assert (kept / "002.out.bad").read_text() == "changed\n"
    assert "+changed" in (kept / "diff.txt").read_text()
    assert (kept / "scratch").is_dir() and (kept / "reproduce.sh").is_file()
    # JUnit, also copied where --junit asked
    root = ET.parse(results / "junit.xml").getroot()
    assert len(list(root.iter("testcase"))) == 6
    assert (tmp_path / "copy.xml").read_text() == (results / "junit.xml").read_text()
    summary = (results / "summary.txt").read_text()
    assert summary.rstrip().endswith("2 passed, 2 failed, 2 skipped")
    assert summary in proc.stdout


def test_reproducer_reruns_with_the_same_environment(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", 'echo "$IMGFMT $IMGOPTS"; exit 1\n', out="")
    results = tmp_path / "results"
    run_cli(["001", "-f", "vmdk", *fake_tree.args(results)])
    proc = subprocess.run(["sh", str(results / "runs/vmdk-file/001/reproduce.sh")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout == "vmdk zeroed_grain=on\n"


def test_environment_is_checks_and_folders_are_private(fake_tree: FakeTree, tmp_path: Path) -> None:
    body = f"""\
    set -e
    echo "$IMGFMT $IMGPROTO $QEMU_DEFAULT_MACHINE $CACHEMODE_IS_DEFAULT"
    for d in "$TEST_DIR" "$SOCK_DIR" "$TMPDIR"; do test -d "$d" && test -z "$(ls -A "$d")"; done
    test "${{#SOCK_DIR}}" -lt 60
    touch "$TEST_DIR/mine"
    read -r line || echo "stdin is empty"
    echo "$TEST_DIR" >> {tmp_path}/dirs
    """
    for name in ("001", "002", "003"):
        fake_tree.add_test(name, body, out="{fmt} file pc true\nstdin is empty\n")
    for name in ("001", "002", "003"):
        Path(f"{fake_tree.iotests / name}.out.raw").write_text("raw file pc true\nstdin is empty\n")
        Path(f"{fake_tree.iotests / name}.out.qcow2").write_text("qcow2 file pc true\nstdin is empty\n")
    results = tmp_path / "results"
    proc = run_cli(["-f", "qcow2,raw", "-j", "3", *fake_tree.args(results)])
    assert proc.returncode == 0, proc.stdout
    dirs = (tmp_path / "dirs").read_text().split()
    assert len(dirs) == 6 and len(set(dirs)) == 6
    assert not any(Path(d).exists() for d in dirs)  # sandboxes of passed runs are gone


def test_python_tests_start_with_the_interpreter(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "import os, sys\nprint(sys.executable == os.environ['PYTHON'])\n",
                       out="True\n", python=True)
    (fake_tree.iotests / "001").chmod(0o644)  # check starts python tests with PYTHON, not by exec
    proc = run_cli(["001", *fake_tree.args(tmp_path / "r")])
    assert proc.returncode == 0, proc.stdout


def test_leftover_processes_of_a_run_are_killed(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", f"sleep 300 &\necho $! > {tmp_path}/pid\n", out="")
    proc = run_cli(["001", *fake_tree.args(tmp_path / "r")])
    assert proc.returncode == 0, proc.stdout
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "background child of the test survived the run"
        time.sleep(0.05)


def test_tap_output(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "", out="")
    fake_tree.add_test("002", "echo x\n", out="")
    proc = run_cli(["--tap", *fake_tree.args(tmp_path / "r")])
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("#")]  # comments: recent history
    assert lines[0] == "TAP version 13"
    assert lines[-1] == "1..2"
    assert sorted(lines[1:-1]) == ["not ok 2 qcow2-file 002 # fail: output mismatch", "ok 1 qcow2-file 001"] or \
        sorted(lines[1:-1]) == ["not ok 1 qcow2-file 002 # fail: output mismatch", "ok 2 qcow2-file 001"]
    assert "passed" in proc.stderr


def test_results_are_written_as_runs_finish_and_interrupt_is_clean(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "", out="")
    fake_tree.add_test("002", f"sleep 300 &\necho $! > {tmp_path}/pid\nsleep 300\n", out="")
    results = tmp_path / "results"
    runner = subprocess.Popen([sys.executable, "-m", "iotests_run", "-j", "2", *fake_tree.args(results)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (results / "results.json").exists() or ("001", "pass") not in {
            (r["test"], r["outcome"]) for r in json.loads((results / "results.json").read_text())["runs"]}:
        assert time.monotonic() < deadline, "the finished run never reached results.json"
        time.sleep(0.1)
    while not (tmp_path / "pid").exists():
        time.sleep(0.05)
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=20)
    assert runner.returncode == 130
    data = json.loads((results / "results.json").read_text())
    assert data["complete"] is False
    assert {r["test"]: r["outcome"] for r in data["runs"]} == {"001": "pass", "002": "interrupted"}
    ET.parse(results / "junit.xml")
    pid = int((tmp_path / "pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "0 failed" in out


def test_sigterm_interrupts_too(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", f"touch {tmp_path}/go; sleep 300\n", out="")
    runner = subprocess.Popen([sys.executable, "-m", "iotests_run", *fake_tree.args(tmp_path / "r")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (tmp_path / "go").exists():
        time.sleep(0.05)
    start = time.monotonic()
    runner.terminate()
    assert runner.wait(timeout=20) == 130
    assert time.monotonic() - start < 5
    assert os.path.exists(tmp_path / "r" / "summary.txt")


def test_runs_declared_not_to_apply_are_not_started(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", f"_supported_fmt raw\ntouch {tmp_path}/started-$IMGFMT\n", out="")
    results = tmp_path / "results"
    proc = run_cli(["-f", "qcow2,raw", *fake_tree.args(results)])
    runs = runs_by_test(results)
    assert runs[("qcow2", "001")]["outcome"] == "not-run"
    assert runs[("qcow2", "001")]["reason"] == "not suitable for this image format: qcow2"
    assert not (tmp_path / "started-qcow2").exists()
    assert (tmp_path / "started-raw").exists()  # (the fake has no common.rc: the raw run fails)
    assert "1 known not to apply" in proc.stdout
    run_cli(["-f", "qcow2", "--no-static-skip", *fake_tree.args(results)])
    assert (tmp_path / "started-qcow2").exists()


def test_list_prints_the_plan_and_starts_nothing(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", f"touch {tmp_path}/started\n", out="")
    fake_tree.add_test("002", f"_supported_fmt qcow2\ntouch {tmp_path}/started\n", out="")
    proc = run_cli(["--list", "-f", "qcow2,raw", *fake_tree.args(tmp_path / "results")])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "001\tqcow2\tfile\trun", "002\tqcow2\tfile\trun",
        "001\traw\tfile\trun", "002\traw\tfile\tskip: not suitable for this image format: raw"]
    assert not (tmp_path / "started").exists() and not (tmp_path / "results").exists()


def test_shards_cover_the_plan_once_and_merge_joins_them(fake_tree: FakeTree, tmp_path: Path) -> None:
    for i in range(1, 8):
        fake_tree.add_test(f"{i:03}", "echo ok\n" if i != 3 else "echo bad\n", out="ok\n")
    history = tmp_path / "durations.json"
    lists = [run_cli(["--list", "--shard", f"{i}/3", "--history", str(history), *fake_tree.args(tmp_path / "r")])
             .stdout.splitlines() for i in (1, 2, 3)]
    flat = [line for lines in lists for line in lines]
    assert sorted(flat) == sorted(set(flat)) and len(flat) == 7
    env = dict(os.environ, CI_NODE_TOTAL="3")
    for i in (1, 2, 3):
        env["CI_NODE_INDEX"] = str(i)
        # each CI machine starts from the same history (the pipeline cache) and updates its own copy
        mine = tmp_path / f"durations-{i}.json"
        proc = run_cli(["--history", str(mine), *fake_tree.args(tmp_path / f"shard{i}")], env=env)
        assert f"shard {i}/3" in proc.stdout
        expected = sorted(("qcow2", line.split()[0]) for line in lists[i - 1])
        assert sorted(runs_by_test(tmp_path / f"shard{i}")) == expected
    merged = tmp_path / "merged"
    proc = run_cli(["merge", str(merged), *(str(tmp_path / f"shard{i}") for i in (1, 2, 3))])
    assert proc.returncode == 1
    runs = runs_by_test(merged)
    assert len(runs) == 7 and runs[("qcow2", "003")]["outcome"] == "fail"
    assert (merged / str(runs[("qcow2", "003")]["artifacts"]) / "diff.txt").is_file()
    root = ET.parse(merged / "junit.xml").getroot()
    failure = next(c for c in root.iter("testcase") if c.get("name") == "003").find("failure")
    assert failure is not None and "+bad" in (failure.text or "")
    assert proc.stdout.rstrip().endswith("6 passed, 1 failed, 0 skipped")
    page = (merged / "report.html").read_text()
    assert page.count('class="cell o-pass"') == 6 and 'href="runs/qcow2-file/003/diff.txt"' in page
    bad = run_cli(["merge", str(tmp_path / "m2"), str(tmp_path / "nowhere")])
    assert bad.returncode == 2 and "merge: no results.json in" in bad.stderr


def test_merge_refuses_shards_that_split_differently_and_its_history_balances_the_next_split(
        fake_tree: FakeTree, tmp_path: Path) -> None:
    for i in range(1, 7):
        fake_tree.add_test(f"{i:03}", f"sleep {1.5 if i == 6 else 0.05}; echo ok\n", out="ok\n")
    env = dict(os.environ, CI_NODE_TOTAL="2")

    def shard(index: int, history: Path, name: str) -> Path:
        env["CI_NODE_INDEX"] = str(index)
        proc = run_cli(["--history", str(history), *fake_tree.args(tmp_path / name)], env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return tmp_path / name

    # a history that knows 006 is long splits differently from an empty one (a cache one shard missed)
    known = tmp_path / "known.json"
    assert run_cli(["--history", str(known), *fake_tree.args(tmp_path / "whole")]).returncode == 0
    cold = [shard(1, tmp_path / "cold-1.json", "cold1"), shard(2, tmp_path / "cold-2.json", "cold2")]
    warm2 = shard(2, known, "warm2")
    proc = run_cli(["merge", str(tmp_path / "bad"), str(cold[0]), str(warm2)])
    assert proc.returncode == 2 and "computed different splits" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    proc = run_cli(["merge", str(tmp_path / "half"), str(cold[0])])
    assert proc.returncode == 130 and "not among the inputs: shard 2/2" in proc.stderr
    assert "INCOMPLETE (shard 2/2 not merged)" in (tmp_path / "half" / "report.html").read_text()

    # merge is the history's one writer: the next pipeline's shards are split by the runs' durations
    merged_history = tmp_path / "merged.json"
    proc = run_cli(["merge", str(tmp_path / "merged"), *map(str, cold), "--history", str(merged_history)])
    assert proc.returncode == 0, proc.stderr
    listed = run_cli(["--list", "--shard", "1/2", "--history", str(merged_history),
                      *fake_tree.args(tmp_path / "r")]).stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["006"]  # the long run alone, the five short ones on shard 2
    page = (tmp_path / "merged" / "report.html").read_text()
    assert page.count('<svg class="timeline"') == 2 and "shard 1/2 (" in page and "shard 2/2 (" in page
    data = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert sorted(r["shard"] for r in data["runs"]) == [1, 1, 1, 2, 2, 2]
    assert [s["shard"]["index"] for s in data["shards"]] == [1, 2]
    timelines = [json.loads((c / "results.json").read_text()).get("timeline", []) for c in cold]
    assert [s["timeline"] for s in data["shards"]] == timelines and any(timelines)
    # the page names the merge's command line, and each shard's under its timeline (not shard 1's as the merge's)
    assert data["command"][:2] == ["iotests-run", "merge"] and "--history" in data["command"]
    for folder, entry in zip(cold, data["shards"], strict=True):
        assert entry["command"] == json.loads((folder / "results.json").read_text())["command"]
        assert f"--results {folder}" in " ".join(entry["command"])
        assert html.escape(" ".join(entry["command"])) in page
    assert page.index("iotests-run merge ") < page.index('<svg class="timeline"')


def test_retry_makes_a_fail_then_pass_flaky_and_keeps_every_attempt(fake_tree: FakeTree, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    body = f'if [ -e {seen} ]; then echo ok; else touch {seen}; echo "Failed to get write lock"; fi\n'
    fake_tree.add_test("001", body, out="ok\n")
    fake_tree.add_test("002", "echo never\n", out="ok\n")
    results = tmp_path / "results"
    proc = run_cli(["--retry", "2", *fake_tree.args(results)])
    assert proc.returncode == 1  # 002 fails every attempt
    runs = runs_by_test(results)
    flaky, failed = runs[("qcow2", "001")], runs[("qcow2", "002")]
    assert flaky["outcome"] == "flaky"
    assert str(flaky["reason"]).startswith("passed on attempt 2; attempt 1: fail: output mismatch")
    assert flaky["artifacts"] == "runs/qcow2-file/001-attempt-1"
    assert "write lock" in (results / "runs/qcow2-file/001-attempt-1/diff.txt").read_text()
    assert failed["outcome"] == "fail" and "attempt 3" in str(failed["reason"])
    for kept in ("002-attempt-1", "002-attempt-2", "002"):
        assert (results / "runs/qcow2-file" / kept / "002.out.bad").read_text() == "never\n"
    assert "Flaky" in proc.stdout
    root = ET.parse(results / "junit.xml").getroot()
    names = [(c.get("classname"), c.get("name")) for c in root.iter("testcase")]
    assert sorted(names) == [("iotests.qcow2-file", "001"), ("iotests.qcow2-file", "002")]  # unique, even with retries

    (tmp_path / "seen").unlink()
    fake_tree.add_test("002", "echo ok\n", out="ok\n")
    assert run_cli(["--retry", "1", *fake_tree.args(results)]).returncode == 0
    (tmp_path / "seen").unlink()
    assert run_cli(["--retry", "1", "--strict-flaky", *fake_tree.args(results)]).returncode == 1


def test_last_failed_and_quarantine(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fake_tree.add_test("002", f"echo run >> {tmp_path}/002-runs; echo bad\n", out="ok\n")
    (fake_tree.iotests / "002.out.raw").write_text("bad\n")  # passes on raw
    results = tmp_path / "results"
    assert run_cli(["-f", "qcow2,raw", *fake_tree.args(results)]).returncode == 1
    proc = run_cli(["--last-failed", *fake_tree.args(results)])
    assert proc.returncode == 1
    assert set(runs_by_test(results)) == {("qcow2", "002")}  # only what failed, on its format
    assert (tmp_path / "002-runs").read_text().count("run") == 3
    quarantine = tmp_path / "quarantine"
    quarantine.write_text("# known flaky\n002 qcow2-file\n")
    proc = run_cli(["--quarantine", str(quarantine), *fake_tree.args(results)])
    assert proc.returncode == 0
    assert "Quarantined (reported, not failing the job): qcow2-file 002" in proc.stdout
    assert proc.stdout.rstrip().endswith("1 passed, 1 failed, 0 skipped")
    quarantine.write_text("002 qcow2-file extra words\n")
    bad = run_cli(["--quarantine", str(quarantine), *fake_tree.args(results)])
    assert bad.returncode == 2 and "quarantine:1" in bad.stderr
    empty = tmp_path / "empty-results"
    bad = run_cli(["--last-failed", *fake_tree.args(empty)])
    assert bad.returncode == 2 and "--last-failed: no results.json in" in bad.stderr


def test_patchew_script_puts_the_summary_first(fake_tree: FakeTree, tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[3] / "tools" / "patchew" / "run"
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    fake_tree.add_test("002", "printf 'changed \\033[31mred\\033[0m\\n'\n", out="original\n")
    env = dict(os.environ, IOTESTS_RESULTS=str(tmp_path / "results"), PYTHON=sys.executable)
    proc = subprocess.run([str(script), str(fake_tree.source), str(fake_tree.build), "qcow2"], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.startswith("iotests-run ")
    summary, _, diffs = proc.stdout.partition("=== qcow2-file/002/diff.txt ===")
    assert summary.rstrip().endswith("1 passed, 1 failed, 0 skipped")
    assert "+changed [31mred[0m" in diffs and "\x1b" not in proc.stdout  # no escape sequence reaches the mail
    # no coverage map where one is named: the full run, said in one line
    nomap = subprocess.run([str(script), str(fake_tree.source), str(fake_tree.build), "qcow2"], capture_output=True,
                           env=dict(env, IOTESTS_COVERAGE_MAP=str(tmp_path / "none.gz"), IOTESTS_AFFECTED_BY="HEAD"),
                           text=True, cwd=tmp_path)
    assert nomap.returncode == 1 and nomap.stdout.startswith(f"(no coverage map at {tmp_path / 'none.gz'}")
    broken = subprocess.run([str(script), str(fake_tree.source), str(tmp_path / "nobuild")], env=env,
                            capture_output=True, text=True, cwd=tmp_path)
    assert broken.returncode == 2
    expected = f"iotests-run: QEMU build folder does not exist: {tmp_path / 'nobuild'}"
    assert broken.stdout.strip().splitlines() == [expected]


def test_iotests_modules_get_bytecode_once_unless_python_is_told_not_to(fake_tree: FakeTree, tmp_path: Path) -> None:
    helper = fake_tree.iotests / "helper.py"
    helper.write_text("GREETING = 'hello'\n")
    fake_tree.add_test("001", "import helper\nprint(helper.GREETING)\n", out="hello\n", python=True)
    cache = fake_tree.iotests / "__pycache__"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    quiet = run_cli(fake_tree.args(tmp_path / "a"), env=dict(env, PYTHONDONTWRITEBYTECODE="1"))
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert not cache.exists()  # the user's wish holds
    proc = run_cli(fake_tree.args(tmp_path / "b"), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [p.name.split(".")[0] for p in cache.glob("*.pyc")] == ["helper"]  # written in the tree, as check's


def _most_at_once(log: Path) -> int:
    events = sorted((float(t), +1 if kind == "start" else -1)
                    for kind, t in (line.split() for line in log.read_text().splitlines()))
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_more_runs_start_only_while_cores_idle(fake_tree: FakeTree, tmp_path: Path) -> None:
    from iotests_run.run.admission import Cpus

    cpus = Cpus.here()
    cores = cpus.count
    if cpus.busy_clock() is None:
        pytest.skip("no CPU accounting to judge idle cores by")
    jobs, count = cores + 5, 2 * (cores + 5)
    log = tmp_path / "events"
    stamp = f'echo "$1 $(date +%s.%N)" >> {log}'
    sleeper = f"stamp() {{ {stamp}; }}\nstamp start; sleep 3; stamp end\necho done\n"
    spinner = f"stamp() {{ {stamp}; }}\nstamp start; timeout 2 sh -c 'while :; do :; done'; stamp end\necho done\n"

    for i in range(count):
        fake_tree.add_test(f"{i + 1:03}", sleeper, out="done\n")
    proc = run_cli(["-j", str(jobs), *fake_tree.args(tmp_path / "sleepers")])
    assert proc.returncode == 0, proc.stderr
    assert f"{cores + 1} to {jobs} in parallel" in proc.stdout
    assert _most_at_once(log) >= cores + 4  # idle cores: the sleepers pile up beyond cores + 1
    cgroups = "a cgroup per run" in proc.stdout
    if cgroups:  # each run's CPU time, counted by its cgroup
        assert all(r["cpu_s"] < 0.5 for r in runs_by_test(tmp_path / "sleepers").values())

    log.unlink()
    for i in range(count):
        fake_tree.add_test(f"{i + 1:03}", spinner, out="done\n")
    proc = run_cli(["-j", str(jobs), *fake_tree.args(tmp_path / "spinners")])
    assert proc.returncode == 0, proc.stderr
    assert _most_at_once(log) <= cores + 2  # busy cores: (almost) no run beyond cores + 1
    if cgroups:
        assert all(r["cpu_s"] >= 1.0 for r in runs_by_test(tmp_path / "spinners").values())

    log.unlink()
    proc = run_cli(["-j", str(jobs), "--fixed-jobs", *fake_tree.args(tmp_path / "fixed")])
    assert proc.returncode == 0, proc.stderr
    assert f"{jobs} in parallel" in proc.stdout
    assert _most_at_once(log) == jobs


def test_cpu_time_only_where_a_cgroup_counted_it(fake_tree: FakeTree, tmp_path: Path) -> None:
    """Without a cgroup (--no-isolation: the marker tracker) what a run used is not counted: null, not 0."""
    # a child that spins 0.3 s and is gone before the test ends: only a cgroup still counts it
    fake_tree.add_test("001", "timeout 0.3 sh -c 'while :; do :; done'\necho done\n", out="done\n")
    proc = run_cli(["--no-isolation", *fake_tree.args(tmp_path / "marker")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert runs_by_test(tmp_path / "marker")[("qcow2", "001")]["cpu_s"] is None
    proc = run_cli(fake_tree.args(tmp_path / "cgroup"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if "a cgroup per run" in proc.stdout:
        cpu_s = runs_by_test(tmp_path / "cgroup")[("qcow2", "001")]["cpu_s"]
        assert isinstance(cpu_s, float) and cpu_s >= 0.2


def test_checks_environment_options_and_skipped_cases(fake_tree: FakeTree, tmp_path: Path) -> None:
    """-c/--nocache, -i and -o set what check's own options set; .casenotrun is kept and shown as check shows it."""
    body = 'echo "$CACHEMODE $CACHEMODE_IS_DEFAULT $AIOMODE $IMGOPTS $QEMU_IO_OPTIONS_NO_FMT"\n'
    fake_tree.add_test("001", body, out="writeback true threads  --cache writeback --aio threads\n")
    Path(f"{fake_tree.iotests}/001.out.nocache").write_text("none false native a=b --cache none --aio native\n")
    fake_tree.add_test("002", 'echo "    [case not run] no pylint here" >> "$TEST_DIR/002.casenotrun"\necho ok\n',
                       out="ok\n")
    results = tmp_path / "results"
    assert run_cli(["001", *fake_tree.args(results)]).returncode == 0
    proc = run_cli(["001", "--nocache", "-i", "native", "-o", "a=b", *fake_tree.args(results)])
    assert proc.returncode == 0, proc.stdout  # judged against 001.out.nocache
    proc = run_cli(["002", "--tap", *fake_tree.args(results)])
    assert proc.returncode == 0, proc.stderr
    assert "ok 1 qcow2-file 002\n#    [case not run] no pylint here\n" in proc.stdout
    run = runs_by_test(results)[("qcow2", "002")]
    assert (run["outcome"], run["casenotrun"]) == ("pass", "    [case not run] no pylint here\n")
    assert "no pylint here" in (results / "summary.txt").read_text()
    case = next(c for c in ET.parse(results / "junit.xml").getroot().iter("testcase") if c.get("name") == "002")
    assert "[case not run] no pylint here" in (case.findtext("system-out") or "")


def counting_test(counter: Path, fails_when: str, extra: str = "") -> str:
    """A test whose n-th start (counted across copies, under a lock) fails when `fails_when` holds for n."""
    return (f'n=$(flock {counter} sh -c \'n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}; '
            f'echo $n\')\n{extra}if [ $(( {fails_when} )) -ne 0 ]; then echo "bad $n"; else echo ok; fi\n')


def test_repeat_counts_failures_with_an_interval_and_keeps_only_the_first_failing_copies(
        fake_tree: FakeTree, tmp_path: Path) -> None:
    from iotests_run.plan.repeats import wilson

    fake_tree.add_test("001", counting_test(tmp_path / "count", "n % 4 == 0"), out="ok\n")  # exactly 1 in 4
    results = tmp_path / "results"
    proc = run_cli(["001", "--repeat", "40", "--keep-failures", "3", *fake_tree.args(results)])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads((results / "results.json").read_text())
    copies = [r for r in data["runs"] if r["test"] == "001"]
    assert sorted(r["copy"] for r in copies) == list(range(1, 41))
    assert sum(r["outcome"] == "fail" for r in copies) == 10
    tally = data["repeats"][0]
    assert (tally["attempts"], tally["failed"], tally["failures"]) == (40, 10, {"fail": 10})
    lo, hi = tally["interval_95"]
    assert lo < 0.25 < hi and (lo, hi) == tuple(round(x, 4) for x in wilson(10, 40))
    kept = sorted(p.name for p in (results / "runs" / "qcow2-file").iterdir())
    assert len(kept) == 3 and all(k.startswith("001-copy-") for k in kept)  # the first 3 failing copies only
    assert "qcow2-file 001: 40 runs, 10 failed (25.0%)" in proc.stdout
    assert "40 attempts, 10 failed (25.0%, 95% interval" in (results / "summary.txt").read_text()
    cases = list(ET.parse(results / "junit.xml").getroot().iter("testcase"))
    assert len(cases) == 1 and "10 failed" in (cases[0].find("failure").get("message") or "")  # type: ignore[union-attr]
    assert wilson(0, 20)[0] == 0.0 and 0.1 < wilson(0, 20)[1] < 0.2  # 0 of N: still an upper bound


def test_until_fail_stops_at_the_first_failure_and_leaves_nothing(fake_tree: FakeTree, tmp_path: Path) -> None:
    marker = f"until-{tmp_path.name}"
    fake_tree.add_test("001", counting_test(tmp_path / "count", "n == 3", extra="sleep 1\n"), out="ok\n")
    results = tmp_path / "results"
    env = dict(os.environ, UNTIL_MARKER=marker)
    proc = run_cli(["001", "--repeat", "50", "--until-fail", "-j", "4", *fake_tree.args(results)], env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    copies = json.loads((results / "results.json").read_text())["runs"]
    assert [r["outcome"] for r in copies].count("fail") == 1
    assert "interrupted" not in {r["outcome"] for r in copies}  # stopped copies are dropped, not reported
    assert len(copies) < 20  # it stopped: far fewer than 50 ran
    assert int((tmp_path / "count").read_text()) < 20
    from test_supervision import marker_processes

    assert marker_processes(marker) == []


def burners() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if "iotests-run --load" in " ".join(p.info["cmdline"] or [])]


def test_load_burns_beside_the_runs_and_is_gone_afterwards_even_after_sigkill(fake_tree: FakeTree,
                                                                              tmp_path: Path) -> None:
    fake_tree.add_test("001", f"pgrep -f 'iotests-run --load' | wc -l > {tmp_path}/seen\necho ok\n", out="ok\n")
    results = tmp_path / "results"
    proc = run_cli(["001", "--load", "2", *fake_tree.args(results)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int((tmp_path / "seen").read_text()) == 2
    assert "2 CPU-burning process(es) beside the runs (--load)" in proc.stdout
    assert json.loads((results / "results.json").read_text())["load"] == 2
    assert burners() == []
    fake_tree.add_test("002", f"touch {tmp_path}/go\nsleep 3600\n", out="")
    runner = subprocess.Popen([sys.executable, "-m", "iotests_run", "002", "--load", "2", "--no-isolation",
                               *fake_tree.args(tmp_path / "killed")], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (tmp_path / "go").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(burners()) == 2
    runner.kill()
    runner.wait()
    deadline = time.monotonic() + 10
    while burners():
        assert time.monotonic() < deadline, "--load processes survived the runner's SIGKILL"
        time.sleep(0.1)


def test_failures_say_how_often_they_failed_here_recently(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo bad\n", out="good\n")
    fake_tree.add_test("002", "echo ok\n", out="ok\n")
    results, hist = tmp_path / "results", tmp_path / "history.json"
    args = [*fake_tree.args(results), "--history", str(hist)]
    first = run_cli([*args, "--tap"])
    assert "# first failure recorded (no earlier run on this tree)" in first.stdout, first.stdout
    second = run_cli(args)
    assert second.returncode == 1
    assert "failed 1 of the last 1 runs on this tree" in (results / "summary.txt").read_text()
    run = runs_by_test(results)[("qcow2", "001")]
    assert run["recent"] == "failed 1 of the last 1 runs on this tree"
    case = next(c for c in ET.parse(results / "junit.xml").getroot().iter("testcase") if c.get("name") == "001")
    assert "failed 1 of the last 1 runs on this tree" in (case.findtext("failure") or "")
    report = run_cli([*args, "--flaky-report"])
    assert report.returncode == 0, report.stderr
    lines = [line for line in report.stdout.splitlines() if "qcow2-file" in line]
    assert len(lines) == 1 and "001" in lines[0] and "100.0%" in lines[0] and "2 fail" in lines[0], report.stdout
