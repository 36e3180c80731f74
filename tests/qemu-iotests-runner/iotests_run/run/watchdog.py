"""The runner's watchdog: ends every run's processes when the runner itself dies.

Started once per invocation in its own session, with a pipe from the runner
on stdin. When the pipe closes (the runner exited, or was killed with SIGKILL)
it kills whatever is left in the invocation's cgroups, or carries its marker,
and removes the cgroups and scratch folder.

    python -m iotests_run.run.watchdog MARKER_PREFIX SCRATCH_ROOT [CGROUP_ROOT]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from iotests_run.files import remove_tree
from iotests_run.run.tracking import MARKER, CgroupRoot, marked_processes, signal_all


def cleanup(marker_prefix: str, scratch: Path, cgroup: Path | None) -> None:
    if cgroup is not None and cgroup.is_dir():
        CgroupRoot(cgroup).close()
    prefix = f"{MARKER}={marker_prefix}/".encode()
    for _ in range(50):
        pids = marked_processes(prefix, prefix=True)
        if not pids:
            break
        signal_all(pids, signal.SIGKILL)
    remove_tree(scratch)


def start(marker_prefix: str, scratch: Path, cgroup: Path | None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "iotests_run.run.watchdog", marker_prefix, str(scratch)]
    if cgroup is not None:
        argv.append(str(cgroup))
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={k: v for k, v in os.environ.items() if k != MARKER})


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns when the runner is gone
    cleanup(argv[0], Path(argv[1]), Path(argv[2]) if len(argv) > 2 else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
