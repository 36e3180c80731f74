"""Failure rates of timing-sensitive iotests: iotests-run against QEMU's own check, same tree, same hour.

    tools/flaky-rates [--attempts 100] [--tests 312,161] [--format qcow2] [--sides ours,ours+load2,ours-j1,check]
                      [--qemu-source DIR --qemu-build DIR]

For each test, these sides (default: all), each --attempts runs:
- ours: `iotests-run TEST --repeat N` (copies side by side, default scheduling);
- ours+load2: the same with `--load 2` (two CPU burners beside the runs);
- ours-j1: `--fixed-jobs -j 1`, one copy at a time, as check runs them (sandboxes without the load
  of parallel copies);
- check: `check -FMT TEST` N times in a row from the build tree (check cannot run copies at once),
  TEST_DIR in a fresh plain /tmp folder for each.
Prints attempts, failures, the failure rate with its 95% Wilson interval, and the wall time per
side. Numbers go into README's Performance section.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from iotests_run.plan.repeats import wilson
from iotests_tools import TOOLS, summary

SIDES = ("ours", "ours+load2", "ours-j1", "check")


def reference_tree() -> tuple[str, str]:
    out = subprocess.run([str(TOOLS / "build-reference-qemu")], check=True, capture_output=True, text=True).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return values["QEMU_SOURCE"], values["QEMU_BUILD"]


def ours(source: str, build: str, fmt: str, test: str, attempts: int, extra: list[str]) -> tuple[int, float]:
    """Failures among `attempts` copies, and the wall time."""
    results = Path(tempfile.mkdtemp(prefix="iotr-rates-"))
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "iotests_run", test, "-f", fmt, "--repeat", str(attempts),
                    "--qemu-source", source, "--qemu-build", build, "--results", str(results),
                    "--history", str(results / "history.json"), "-q", *extra],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - start
    data = json.loads((results / "results.json").read_text())
    shutil.rmtree(results, ignore_errors=True)
    return sum(1 for r in data["runs"] if r["outcome"] in ("fail", "hang", "timeout", "crash")), wall


def check(build: str, fmt: str, test: str, attempts: int) -> tuple[int, float]:
    failed = 0
    start = time.monotonic()
    for _ in range(attempts):
        workdir = Path(tempfile.mkdtemp(prefix="iotr-check-", dir="/tmp"))
        env = dict(os.environ, TEST_DIR=str(workdir / "scratch"), SOCK_DIR=str(workdir / "s"))
        proc = subprocess.run([sys.executable, "check", f"-{fmt}", test], cwd=Path(build, "tests", "qemu-iotests"),
                              env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        failed += proc.returncode != 0 or "Failures:" in proc.stdout
        shutil.rmtree(workdir, ignore_errors=True)
    return failed, time.monotonic() - start


def main() -> int:
    p = argparse.ArgumentParser(prog="flaky-rates", description=summary(__doc__))
    p.add_argument("--attempts", type=int, default=100)
    p.add_argument("--tests", default="312,161")
    p.add_argument("--format", default="qcow2")
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--qemu-source")
    p.add_argument("--qemu-build")
    args = p.parse_args()
    if args.attempts < 1:
        p.error(f"argument --attempts: must be at least 1: {args.attempts}")
    for side in args.sides.split(","):
        if side not in SIDES:
            p.error(f"argument --sides: unknown side: {side} (known: {', '.join(SIDES)})")
    source, build = (args.qemu_source, args.qemu_build) if args.qemu_build else reference_tree()
    print(f"{'test':<6}{'side':<12}{'attempts':>9}{'failed':>8}{'rate':>8}{'95% interval':>16}{'wall s':>9}")
    for test in args.tests.split(","):
        mine = partial(ours, source, build, args.format, test, args.attempts)
        sides = {"ours": partial(mine, []), "ours+load2": partial(mine, ["--load", "2"]),
                 "ours-j1": partial(mine, ["--fixed-jobs", "-j", "1"]),
                 "check": partial(check, build, args.format, test, args.attempts)}
        for side in args.sides.split(","):
            failed, wall = sides[side]()
            lo, hi = wilson(failed, args.attempts)
            print(f"{test:<6}{side:<12}{args.attempts:>9}{failed:>8}{100 * failed / args.attempts:>7.1f}%"
                  f"{f'{100 * lo:.1f}-{100 * hi:.1f}%':>16}{wall:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
