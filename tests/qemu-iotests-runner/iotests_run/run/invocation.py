"""What one invocation sets up around all its runs, and tears down after them.

The isolation the machine allows (probed once), a cgroup root or, without one, the runner as
subreaper of the runs' orphans; the short scratch root; the watchdog that outlives a killed
runner; each run's limits. execute.execute_all runs the pool inside all that.
"""

from __future__ import annotations

import json
import py_compile
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from iotests_run.affected.recorder import Recorder
from iotests_run.model import LiveRun, Result, Run
from iotests_run.plan.repeats import Policy
from iotests_run.run.admission import Admission
from iotests_run.run.adoption import Adopter
from iotests_run.run.burners import Load
from iotests_run.run.execute import Context, execute_all
from iotests_run.run.isolation import probe
from iotests_run.run.registry import Registry
from iotests_run.run.sandbox import ShortRoot
from iotests_run.run.supervise import HANG_FLOOR_S, Limits, SoonerHang
from iotests_run.run.tracking import CgroupRoot, Trackers
from iotests_run.run.watchdog import start as start_watchdog
from iotests_run.tree.environment import Settings, TestsBase
from iotests_run.tree.qemu import QemuTree


@dataclass(frozen=True)
class LimitOptions:
    timeout_s: float  # --timeout, unless timeouts.json names the test
    multiplier: float  # --timeout-multiplier
    hang_timeout_s: float
    grace_s: float
    hang_factor: float = 0.0  # --hang-factor
    passed: Mapping[str, float] = field(default_factory=dict)  # history_key -> its last run's duration, a pass


def limits_for(options: LimitOptions) -> Callable[[Run], Limits]:
    """Each run's limits: --timeout or the shipped per-test override, times the multiplier; --hang-timeout,
    or sooner for a run that passed last time: --hang-factor times that run's duration (times the
    multiplier), never under HANG_FLOOR_S. A healthy run cannot sit idle for longer than it took in all
    (supervise.SoonerHang: unless it waits for a disk)."""
    table = json.loads(resources.files("iotests_run.run").joinpath("timeouts.json").read_text())["tests"]

    def limits(run: Run) -> Limits:
        timeout = float(table.get(run.test.key, options.timeout_s)) * options.multiplier
        sooner = None
        took = options.passed.get(run.id.history_key)
        if options.hang_factor and took is not None:
            after = round(max(HANG_FLOOR_S, options.hang_factor * took) * options.multiplier, 1)
            if after < options.hang_timeout_s:
                sooner = SoonerHang(after, f"--hang-factor {options.hang_factor:g} x {took:g} s, its last passing run")
        return Limits(timeout_s=timeout, hang_timeout_s=options.hang_timeout_s, grace_s=options.grace_s,
                      sooner_hang=sooner)

    return limits


def precompile(iotests: Path, environ: Mapping[str, str]) -> None:
    """Bytecode for the iotests folder's modules (iotests.py, ...), as check's first Python test leaves it.

    Each run sees that folder through its own overlay, so bytecode a test writes there is gone
    with the run and every Python test would compile iotests.py again. Nothing is written when
    the user asked Python not to write bytecode.
    """
    if environ.get("PYTHONDONTWRITEBYTECODE"):
        return
    for module in sorted(iotests.glob("*.py")):
        try:
            py_compile.compile(str(module), doraise=True)
        except (OSError, py_compile.PyCompileError):
            continue


def cpu_seconds() -> dict[str, float]:
    """CPU time of the runner itself and of the test processes it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"runner": round(own.ru_utime + own.ru_stime, 2), "children": round(kids.ru_utime + kids.ru_stime, 2)}


@dataclass(frozen=True)
class Ended:
    interrupted: bool  # by SIGINT or SIGTERM
    orphans: list[str]  # processes no single run could be blamed for (no cgroups), killed at the end
    stopped: str | None = None  # why the runs left were not started, when Hooks.enough said so (--maxfail)


@dataclass(frozen=True)
class Hooks:
    """How the pool talks to the reporting side."""

    finished: Callable[[Result], None]
    tick: Callable[[Sequence[LiveRun]], None]
    note: Callable[[str], None]
    enough: Callable[[], str | None] = lambda: None  # why to stop starting runs now (--maxfail), or None
    alert: Callable[[str], None] = lambda text: None  # a line shown even with --quiet (--gdb: where QEMU waits)


def run_in_sandboxes(runs: list[Run], tree: QemuTree, *, results_dir: Path, scratch: Path, isolate: bool,
                     perturb: str, user_env: Mapping[str, str], environ: Mapping[str, str],
                     limits: Callable[[Run], Limits], retries: int, admission: Admission, hooks: Hooks,
                     settings: Settings, repeat: Policy | None = None, load: int = 0,
                     epoch: float | None = None, coverage: Recorder | None = None) -> Ended:
    """Run everything in sandboxes, with a watchdog behind them, and clean up whatever happens."""
    isolation = probe(wanted=isolate, iotests=tree.iotests, scratch=scratch)
    cgroups = CgroupRoot.create() if isolate else None
    if isolation.cores:
        precompile(tree.iotests, environ)
    hooks.note(f"iotests-run: isolation: {isolation.describe()}; "
               f"{'a cgroup per run' if cgroups else 'processes tracked by environment marker'}")
    short_root = ShortRoot(scratch)
    marker = short_root.path.name
    watchdog = start_watchdog(marker, short_root.path, cgroups.path if cgroups else None)
    adopter = None if cgroups else Adopter.start()
    burners = Load.start(load, marker, cgroups)
    if adopter is not None:
        for pid in (watchdog.pid, *burners.pids):
            adopter.ignore(pid)
    if load:
        hooks.note(f"iotests-run: {load} CPU-burning process(es) beside the runs (--load)")
    registry = Registry()
    ctx = Context(tree=tree, results=results_dir, short_root=short_root, registry=registry,
                  base=TestsBase(user_env, perturb, settings), limits=limits, isolation=isolation,
                  trackers=Trackers(cgroups, marker, adopter), retries=retries, repeat=repeat,
                  epoch=time.monotonic() if epoch is None else epoch, coverage=coverage, note=hooks.alert)
    interrupted = False
    try:
        execute_all(runs, ctx, admission, hooks.finished, on_tick=lambda: hooks.tick(registry.live()),
                    enough=hooks.enough)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        burners.stop()
        orphans = adopter.close() if adopter is not None else []
        short_root.close()
        if cgroups is not None:
            cgroups.close()
        if watchdog.stdin is not None:
            watchdog.stdin.close()
        watchdog.wait()
    stopped = registry.why if registry.stopping.is_set() and not interrupted else None
    return Ended(interrupted, orphans, stopped)
