"""--load N: CPU-burning processes beside the runs, to imitate an overloaded CI machine.

They live as long as the invocation: in a cgroup of their own under the invocation's (killed
with it), or carrying the invocation's marker (the watchdog kills them if the runner is killed
with SIGKILL), and with PDEATHSIG set; stop() ends them at the end and on Ctrl-C.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from iotests_run.run.isolation import Isolation, child_setup
from iotests_run.run.tracking import MARKER, CgroupRoot, Tracker

# Its argv names it, so that ps shows what it is.
BURN = "while True: pass  # iotests-run --load"


@dataclass
class Load:
    tracker: Tracker | None
    processes: list[subprocess.Popen[bytes]]

    @staticmethod
    def start(count: int, marker: str, cgroups: CgroupRoot | None) -> Load:
        if count == 0:
            return Load(None, [])
        tracker = cgroups.run_cgroup("load") if cgroups is not None else None
        env = {MARKER: f"{marker}/load"}
        procs = [subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env,
                                  preexec_fn=child_setup(Isolation(), tracker.cgroup_procs if tracker else None))
                 for _ in range(count)]
        return Load(tracker, procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for proc in self.processes:
            proc.kill()
        for proc in self.processes:
            proc.wait()
        if self.tracker is not None:
            self.tracker.close()

