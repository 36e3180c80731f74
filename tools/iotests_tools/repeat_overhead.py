"""What one --repeat copy costs beyond the test itself: a trivial test (sleep 0.1) repeated.

    tools/repeat-overhead [--attempts 300] [--jobs N]

Builds a fake QEMU tree in a temporary folder (the binaries are never started), runs
`iotests-run 001 --repeat N` there, and prints the wall time, the attempts per second, the wall
time per attempt over what the test itself takes at that concurrency, and the runner's own CPU
per attempt (sandbox, namespaces, cgroup, supervision, reports).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iotests_tools import summary
from support import make_fake_tree

TEST_S = 0.1


def main() -> int:
    p = argparse.ArgumentParser(prog="repeat-overhead", description=summary(__doc__))
    p.add_argument("--attempts", type=int, default=300)
    p.add_argument("--jobs", type=int, default=0, help="--fixed-jobs -j N (default: iotests-run's own admission)")
    args = p.parse_args()
    if args.attempts < 1 or args.jobs < 0:
        p.error("--attempts must be at least 1, --jobs 0 or more")
    top = Path(tempfile.mkdtemp(prefix="iotr-overhead-", dir="/tmp"))
    try:
        tree = make_fake_tree(top / "tree")
        tree.add_test("001", f"sleep {TEST_S}\necho ok\n", out="ok\n")
        results = top / "results"
        extra = ["--fixed-jobs", "-j", str(args.jobs)] if args.jobs else []
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "iotests_run", "001", "--repeat", str(args.attempts),
                               *tree.args(results), "--history", str(top / "history.json"), "-q", *extra],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        wall = time.monotonic() - start
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 1
        data = json.loads((results / "results.json").read_text())
        runner_cpu = float(data["cpu_s"]["runner"])
        jobs = int(data["jobs"]) if args.jobs else None
        mean = sum(r["duration_s"] for r in data["runs"]) / len(data["runs"])
        print(f"{args.attempts} attempts of a {TEST_S} s test in {wall:.1f} s: {args.attempts / wall:.1f} attempts/s")
        print(f"mean time per attempt as measured around the test process: {mean * 1000:.0f} ms "
              f"({(mean - TEST_S) * 1000:.0f} ms more than the test's own {TEST_S * 1000:.0f} ms)")
        print(f"runner's own CPU: {runner_cpu:.1f} s in all, {runner_cpu / args.attempts * 1000:.1f} ms per attempt"
              + (f" (--fixed-jobs -j {jobs})" if jobs else ""))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
