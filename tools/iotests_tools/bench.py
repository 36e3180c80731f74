"""Benchmark iotests-run against QEMU's own check on the same tree, in one invocation.

    tools/bench [--rounds N] [--scenario a|b|c|all] [--check-jobs 4] [--qemu-source DIR --qemu-build DIR]
    tools/bench --simulate RESULTS_JSON [--slots 2,4,8,16,32] [--format F] [--warm-from EARLIER_JSON]

--simulate measures nothing: it replays a results.json's run durations through the real
planner onto N slots (tools/iotests_tools/simulate.py says how).

Scenario a: `check -qcow2 -g quick -j 4` vs `iotests-run -f qcow2 -g quick`.
Scenario b: `check -j 4` for qcow2, raw and qed quick back to back vs one
`iotests-run -f qcow2,raw,qed -g quick`.
Scenario c: QEMU's own `make check-block` in the build folder (default: the
reference QEMU 10.0 tree), upstream's (one meson test per iotest) vs the same
command after tools/qemu-integrate (iotests-run), plain and with -j 4; the
integration is removed again at the end. Not part of `all` (about 6 minutes a round).
Runs alternate (check first, then iotests-run, each round). Prints the wall
times, the ratio, and every test whose verdict differs between the two; for
scenarios a and b also the machine's busy and idle core-seconds during each
side (/proc/stat through psutil) and the ratio iotests-run would have reached
had no core idled (its busy core-seconds / cores, over check's wall time):
where that is above a target, no scheduling can meet it on this machine. With
--rounds N, a last line per scenario sums the rounds (noise on a shared host
makes single rounds unreliable).

check runs with TEST_DIR in a fresh plain /tmp folder, as iotests-run's
sandboxes are: iotests 197 and 215 refuse to run where TEST_DIR has characters
other than letters, digits and -_/ (the default ~/.cache location has a dot).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import TypeVar

import psutil

from iotests_tools import TOOLS, simulate, summary

T = TypeVar("T")

# check -j prints TAP from several processes; a line can be glued to another one, so search, not match.
TAP_RESULT = re.compile(r"(not ok|ok) ([a-z0-9]+) (\d{3}(?!\d)|[a-z][\w-]*?(?=ok |not ok |#| |\n|$))( # SKIP)?")
VERDICT_OF_OUTCOME = {"pass": "pass", "fail": "fail", "not-run": "not run", "timeout": "fail", "hang": "fail",
                      "crash": "fail", "flaky": "pass", "interrupted": "interrupted"}


MESON_RESULT = {"OK": "pass", "SKIP": "not run", "FAIL": "fail", "TIMEOUT": "fail", "ERROR": "fail"}


def reference_tree(version: str = "7.2") -> tuple[str, str]:
    out = subprocess.run([str(TOOLS / "build-reference-qemu"), "--version", version], check=True,
                         capture_output=True, text=True).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return values["QEMU_SOURCE"], values["QEMU_BUILD"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> tuple[float, float]:
    """Core-seconds this machine has been busy and idle since boot (steal and guest time left out)."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, t.idle + getattr(t, "iowait", 0.0)


def measured(work: Callable[[], T]) -> tuple[T, float, float]:
    """work()'s result, with the machine's busy and idle core-seconds while it ran."""
    busy0, idle0 = machine_cpu()
    result = work()
    busy1, idle1 = machine_cpu()
    return result, busy1 - busy0, idle1 - idle0


def run_check(build: str, fmt: str, selection: list[str], jobs: int,
              options: Sequence[str] = ()) -> tuple[float, dict[str, str]]:
    """QEMU's own check from the build tree (with check's options, e.g. -misalign), its TAP output parsed into
    verdicts per test."""
    workdir = Path(tempfile.mkdtemp(prefix="iotr-check-", dir="/tmp"))
    env = dict(os.environ, TEST_DIR=str(workdir / "scratch"), SOCK_DIR=str(workdir / "s"))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "check", "-tap", f"-{fmt}", "-j", str(jobs), *options, *selection],
                          cwd=Path(build, "tests", "qemu-iotests"), env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    wall = time.monotonic() - start
    shutil.rmtree(workdir, ignore_errors=True)
    verdicts = {}
    for m in TAP_RESULT.finditer(proc.stdout):
        verdicts[f"{m.group(2)}-file {m.group(3)}"] = "not run" if m.group(4) else (
            "pass" if m.group(1) == "ok" else "fail")
    return wall, verdicts


def run_ours(source: str, build: str, formats: list[str], selection: list[str],
             extra: list[str]) -> tuple[float, dict[str, str], dict[str, object]]:
    results = Path(tempfile.mkdtemp(prefix="iotr-bench-"))
    cmd = [sys.executable, "-m", "iotests_run", "-f", ",".join(formats), "--qemu-source", source,
           "--qemu-build", build, "--results", str(results), *extra, *selection]
    start = time.monotonic()
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - start
    data = json.loads((results / "results.json").read_text())
    shutil.rmtree(results, ignore_errors=True)
    verdicts = {f"{r['format']}-{r['protocol']} {r['test']}": VERDICT_OF_OUTCOME[r["outcome"]] for r in data["runs"]}
    return wall, verdicts, data


def make_check_block(source: str, build: str, ours: bool, jobs: int | None) -> tuple[float, dict[str, str]]:
    """QEMU's `make check-block` in its build folder, upstream's or (integrated) ours; reconfiguring is not timed."""
    action = ["--build", build] if ours else ["--remove"]
    subprocess.run([sys.executable, str(TOOLS / "qemu-integrate"), source, *action], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    # QEMU's Makefile reconfigures with the ninja the build was configured with: another ninja
    # (a venv's, first on PATH) rewrites .ninja_deps in its own format and the next build recompiles all.
    subprocess.run(["make", "-C", build, "Makefile.mtest"], check=True, capture_output=True, env=env)
    start = time.monotonic()
    subprocess.run(["make", "-C", build, *([f"-j{jobs}"] if jobs else []), "check-block"], env=env,
                   stdin=subprocess.DEVNULL, capture_output=True)
    wall = time.monotonic() - start
    verdicts: dict[str, str] = {}
    if ours:
        data = json.loads(Path(build, "tests", "qemu-iotests-runner", "results-qcow2", "results.json").read_text())
        verdicts = {f"qcow2-file {r['test']}": VERDICT_OF_OUTCOME[r["outcome"]] for r in data["runs"]}
    else:
        for line in Path(build, "meson-logs", "testlog.json").read_text().splitlines():
            name = json.loads(line)["name"].split(" / ")[-1]  # "qemu:block / io-qcow2-004"
            if name.startswith("io-qcow2-"):
                verdicts[f"qcow2-file {name[len('io-qcow2-'):]}"] = MESON_RESULT.get(json.loads(line)["result"], "fail")
    return wall, verdicts


def scenario_c(rounds: int, source: str, build: str, jobs: int) -> list[str]:
    rows: list[tuple[int, str, float, float, float, int]] = []
    mismatches: list[str] = []
    try:
        for rnd in range(1, rounds + 1):
            for j in (None, jobs):
                label = f"make {'-j' + str(j) + ' ' if j else ''}check-block"
                up_wall, up = make_check_block(source, build, ours=False, jobs=j)
                print(f"[c{rnd}] upstream {label}: {up_wall:.1f} s ({len(up)} iotests)", flush=True)
                our_wall, our = make_check_block(source, build, ours=True, jobs=j)
                print(f"[c{rnd}] iotests-run {label}: {our_wall:.1f} s ({len(our)} runs)", flush=True)
                diff = differences(up, our)
                mismatches += [f"[c{rnd} {label}] {d}" for d in diff]
                rows.append((rnd, label, up_wall, our_wall, 0.5 if j is None else 0.9, len(diff)))
    finally:
        subprocess.run([sys.executable, str(TOOLS / "qemu-integrate"), source, "--remove"], capture_output=True)
    print(f"\n{'round':>5}  {'command':<24}{'upstream':>10}{'iotests-run':>13}{'ratio':>7}{'target':>8}"
          f"{'verdict diffs':>15}")
    for rnd, label, uw, ow, target, nd in rows:
        print(f"{rnd:>5}  {label:<24}{uw:>9.1f}s{ow:>12.1f}s{ow / uw:>7.3f}{'<=' + str(target):>8}{nd:>15}")
    return mismatches


TARGETS = {"a": 0.95, "b": 0.85}


@dataclass(frozen=True)
class Row:
    scenario: str
    round: str
    formats: str
    check_wall: float
    ours_wall: float
    ours_cpu: float  # rusage of iotests-run and its tests (what the runner's share is of)
    runner_cpu: float
    check_busy: float  # the whole machine's, while check ran
    check_idle: float
    ours_busy: float
    ours_idle: float
    runs: int
    diffs: int


def differences(check: dict[str, str], ours: dict[str, str]) -> list[str]:
    return [f"{key}: check {check.get(key, 'absent')}, iotests-run {ours.get(key, 'absent')}"
            for key in sorted(set(check) | set(ours)) if check.get(key) != ours.get(key)]


def slots_list(text: str) -> list[int]:
    try:
        return simulate.parse_slots(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main() -> int:
    p = argparse.ArgumentParser(description=summary(__doc__))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--scenario", choices=["a", "b", "c", "all"], default="all")
    p.add_argument("--check-jobs", type=int, default=4)
    p.add_argument("--qemu-source")
    p.add_argument("--qemu-build")
    p.add_argument("--group", default="quick")
    p.add_argument("--simulate", type=Path, metavar="RESULTS_JSON",
                   help="replay this results.json's durations through the planner onto N slots; runs nothing")
    p.add_argument("--slots", type=slots_list, default=list(simulate.DEFAULT_SLOTS),
                   help="--simulate: the slot counts (default: 2,4,8,16,32)")
    p.add_argument("--format", action="append", default=[],
                   help="--simulate: only this format's runs (repeatable; default: all in the file)")
    p.add_argument("--warm-from", type=Path, metavar="EARLIER_JSON",
                   help="--simulate: warm is planned from this earlier round's durations (default: the same runs')")
    p.add_argument("runner_args", nargs="*", help="extra iotests-run arguments (after --)")
    args = p.parse_args()
    if args.simulate is not None:
        return simulate.main(args.simulate, args.slots, args.format, args.warm_from)
    if args.scenario == "c":
        source, build = (args.qemu_source, args.qemu_build) if args.qemu_build else reference_tree("10.0")
        differing = scenario_c(args.rounds, source, build, args.check_jobs)
        if differing:
            print("\nVerdicts that differ (flaky tests show up here too):")
            print("\n".join(differing))
        return 0
    source, build = (args.qemu_source, args.qemu_build) if args.qemu_build else reference_tree()
    selection = ["-g", args.group]
    scenarios = {"a": ["qcow2"], "b": ["qcow2", "raw", "qed"]}
    chosen = ["a", "b"] if args.scenario == "all" else [args.scenario]
    mismatches: list[str] = []
    rows = []
    cores = len(os.sched_getaffinity(0))
    for name in chosen:
        formats = scenarios[name]
        for rnd in range(1, args.rounds + 1):
            check_wall = check_busy = check_idle = 0.0
            check_verdicts: dict[str, str] = {}
            for fmt in formats:
                (wall, verdicts), busy, idle = measured(partial(run_check, build, fmt, selection, args.check_jobs))
                check_wall += wall
                check_busy += busy
                check_idle += idle
                check_verdicts.update(verdicts)
                print(f"[{name}{rnd}] check -{fmt} {' '.join(selection)} -j {args.check_jobs}: {wall:.1f} s "
                      f"(machine busy {busy:.1f}, idle {idle:.1f} core-s)", flush=True)
            cpu0 = children_cpu()
            (ours_wall, ours_verdicts, data), ours_busy, ours_idle = measured(
                partial(run_ours, source, build, formats, selection, args.runner_args))
            total_cpu = children_cpu() - cpu0
            cpu = data.get("cpu_s", {})
            runner_cpu = float(cpu.get("runner", 0.0)) if isinstance(cpu, dict) else 0.0
            print(f"[{name}{rnd}] iotests-run -f {','.join(formats)} {' '.join(selection)}: {ours_wall:.1f} s "
                  f"(machine busy {ours_busy:.1f}, idle {ours_idle:.1f} core-s; "
                  f"runner CPU {runner_cpu:.1f} s of {total_cpu:.1f} s)", flush=True)
            diff = differences(check_verdicts, ours_verdicts)
            mismatches += [f"[{name}{rnd}] {d}" for d in diff]
            rows.append(Row(name, str(rnd), "+".join(formats), check_wall, ours_wall, total_cpu,
                            runner_cpu, check_busy, check_idle, ours_busy, ours_idle, len(check_verdicts),
                            len(diff)))
        if args.rounds > 1:
            mine = [r for r in rows if r.scenario == name]
            numbers = fields(Row)[3:]  # every field after scenario, round and formats
            rows.append(Row(name, "sum", mine[0].formats, *(sum(getattr(r, f.name) for r in mine) for f in numbers)))
    print()
    print(f"{'scenario':<9}{'round':>6}  {'formats':<16}{'check -j' + str(args.check_jobs):>12}"
          f"{'iotests-run':>13}{'ratio':>7}{'target':>8}{'no-idle ratio':>15}{'busy/idle check':>17}"
          f"{'busy/idle ours':>16}{'runner CPU':>12}{'runs':>6}{'verdict diffs':>15}")
    for r in rows:
        share = f"{100 * r.runner_cpu / r.ours_cpu:.1f}%" if r.ours_cpu else "n/a"
        print(f"{r.scenario:<9}{r.round:>6}  {r.formats:<16}{r.check_wall:>11.1f}s{r.ours_wall:>12.1f}s"
              f"{r.ours_wall / r.check_wall:>7.3f}{'<=' + str(TARGETS[r.scenario]):>8}"
              f"{r.ours_busy / cores / r.check_wall:>15.3f}{f'{r.check_busy:.0f}/{r.check_idle:.0f}':>17}"
              f"{f'{r.ours_busy:.0f}/{r.ours_idle:.0f}':>16}{share:>12}{r.runs:>6}{r.diffs:>15}")
    print(f"(busy/idle: the machine's core-seconds on {cores} cores; no-idle ratio: iotests-run's busy "
          "core-seconds / cores over check's wall time, the best any scheduling could do with that CPU)")
    if mismatches:
        print("\nVerdicts that differ (flaky tests show up here too):")
        print("\n".join(mismatches))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
