"""iotests-run's command line: find tests -> plan runs -> execute in sandboxes -> judge -> report."""

from __future__ import annotations

import argparse
import json
import math
import os
import py_compile
import re
import resource
import shlex
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from iotests_run import __version__, history, plan, reruns
from iotests_run.adoption import Adopter
from iotests_run.cpu import Admission, Cpus
from iotests_run.discovery import discover
from iotests_run.environment import (
    IOTESTS_VARIABLES,
    VARIABLE_NAME,
    environment_for_tests,
    iotests_environment,
    malloc_perturb,
)
from iotests_run.errors import SetupError, UsageError
from iotests_run.execute import Context, execute_all
from iotests_run.isolation import probe
from iotests_run.merge import merge_folders
from iotests_run.model import Outcome, Result, Run, fails_the_job
from iotests_run.qemu import QemuTree, open_tree, reference_cache
from iotests_run.report.files import write_atomically
from iotests_run.report.html import html_report
from iotests_run.report.junit import junit_xml
from iotests_run.report.progress import NORMAL, QUIET, QUIET_NOTICE_S, VERBOSE, Eta, Progress
from iotests_run.report.results_json import results_json
from iotests_run.report.summary import closing_line, summary_text
from iotests_run.report.tap import HEADER, tap_line, tap_plan
from iotests_run.reruns import Quarantine
from iotests_run.results_folder import check_outside, claim
from iotests_run.sandbox import LiveRun, Registry, ShortRoot, default_scratch
from iotests_run.services import unavailable
from iotests_run.supervise import Limits
from iotests_run.text import printable
from iotests_run.tracking import CgroupRoot
from iotests_run.watchdog import start as start_watchdog

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# No healthy quick iotest comes near these (the slowest take about 16 s on 2 busy cores).
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_HANG_TIMEOUT_S = 120.0


def default_jobs(environ: Mapping[str, str], cores: int) -> int:
    """IOTESTS_RUN_JOBS, else make's -jN (MAKEFLAGS, under make check-block), else 4 x the usable cores (README).

    A ceiling, not a target: beyond cores + 1, runs start only while cores idle (cpu.Admission).
    """
    value = environ.get("IOTESTS_RUN_JOBS", "")
    if value:  # set and not empty
        if not value.strip().isdigit() or int(value) < 1:
            raise UsageError(f"bad IOTESTS_RUN_JOBS: {printable(value)} (expected a number of at least 1)")
        return int(value)
    make = re.search(r"(?:^|\s)-j\s*(\d+)(?:\s|$)", environ.get("MAKEFLAGS", ""))
    if make and int(make.group(1)) > 0:
        return int(make.group(1))
    return 4 * cores


def extra_arguments(environ: Mapping[str, str]) -> list[str]:
    """IOTESTS_RUN_ARGS: options for runs started where the command line is not ours (make check-block)."""
    try:
        return shlex.split(environ.get("IOTESTS_RUN_ARGS", ""))
    except ValueError as exc:
        raise UsageError(f"bad IOTESTS_RUN_ARGS: {exc}") from None


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str],
                    environ: Mapping[str, str]) -> argparse.Namespace:
    """The command line over IOTESTS_RUN_ARGS: what the environment sets is only a default."""
    extra = extra_arguments(environ)
    if extra:
        try:
            defaults = parser.parse_args(extra)
        except UsageError as exc:
            raise UsageError(f"IOTESTS_RUN_ARGS: {exc}") from None
        parser.set_defaults(**vars(defaults))
    return parser.parse_args(argv)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _number(convert: Callable[[str], float], minimum: float, strict: bool, wording: str) -> Callable[[str], Any]:
    """An argparse type: a number of the given kind above (strict) or at least minimum."""

    def parse(value: str) -> Any:
        try:
            n = convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value}") from None
        if not n >= minimum or (strict and n == minimum):  # "not >=" also refuses nan
            raise argparse.ArgumentTypeError(f"must be {wording}: {value}")
        return n

    return parse


_jobs = _number(int, 1, False, "at least 1")
_count = _number(int, 0, False, "0 or more")
_seconds = _number(float, 0, True, "more than 0")


def _variable_name(value: str) -> str:
    if not VARIABLE_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not a variable name: {value}")
    return value


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def make_parser(cpus: Cpus | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog="iotests-run", description="Run QEMU's iotests in parallel sandboxes, "
                "judged exactly as QEMU's check judges them.")
    p.add_argument("tests", nargs="*", metavar="TEST", help="tests to run (040, 1, backing-file-invalidation)")
    p.add_argument("-f", "--format", type=_csv, default=["qcow2"], help="image formats, comma separated")
    p.add_argument("-p", "--protocol", type=_csv, default=["file"], help="protocols, comma separated")
    p.add_argument("-g", "--groups", type=_csv, default=[], help="include tests of these groups")
    p.add_argument("-x", "--exclude-groups", type=_csv, default=[], help="exclude tests of these groups")
    p.add_argument("-j", "--jobs", type=_jobs, default=default_jobs(os.environ, (cpus or Cpus.here()).count),
                   help="at most this many runs at once (default: %(default)s: IOTESTS_RUN_JOBS, else make's -jN, "
                        "else 4 x the usable cores); beyond cores + 1, a run starts only while cores idle")
    p.add_argument("--fixed-jobs", action="store_true",
                   help="always keep --jobs runs going, busy cores or not")
    p.add_argument("--qemu-source", metavar="DIR", help="QEMU source tree")
    p.add_argument("--qemu-build", metavar="DIR", help="QEMU build folder")
    p.add_argument("--results", metavar="DIR", default="iotests-results",
                   help="results folder (default: ./iotests-results)")
    p.add_argument("--junit", metavar="FILE", help="also write the JUnit report here")
    p.add_argument("--tap", action="store_true", help="print TAP 13 on stdout (progress goes to stderr)")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", dest="level", action="store_const", const=QUIET, default=NORMAL,
                      help="print only failed runs and the closing line (summary.txt still has everything)")
    talk.add_argument("-v", "--verbose", dest="level", action="store_const", const=VERBOSE,
                      help="a line for every finished run, on a terminal too, and each failure's diff under it")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="hard limit per run (default: %(default)g; per-test overrides in timeouts.json)")
    p.add_argument("--timeout-multiplier", type=_seconds, default=1.0, metavar="X",
                   help="multiply every hard limit, for slow machines and sanitizer builds")
    p.add_argument("--hang-timeout", type=_seconds, default=DEFAULT_HANG_TIMEOUT_S, metavar="SECONDS",
                   help="a run whose processes used no CPU and wrote no output this long is a hang "
                        "(default: %(default)g)")
    p.add_argument("--grace", type=_seconds, default=3.0, metavar="SECONDS",
                   help="between TERM and KILL when a run is stopped (default: %(default)g)")
    p.add_argument("--retry", type=_count, default=0, metavar="N",
                   help="try a failed, hung, timed-out or crashed run again, up to N times, in a fresh sandbox; "
                        "one that then passes is flaky")
    p.add_argument("--strict-flaky", action="store_true", help="flaky runs fail the job too")
    p.add_argument("--last-failed", action="store_true",
                   help="run again what failed, hung, timed out, crashed, was flaky or interrupted in the previous "
                        "run recorded in the results folder")
    p.add_argument("--quarantine", metavar="FILE", type=Path,
                   help="known-flaky runs (lines: TEST [FORMAT-PROTOCOL]) are reported but do not fail the job")
    p.add_argument("--still-running-every", type=_seconds, default=QUIET_NOTICE_S, metavar="SECONDS",
                   help="name the runs still going after this long without a progress line (default: %(default)g)")
    p.add_argument("--no-isolation", action="store_true",
                   help="no network/mount namespaces or cgroups; processes are still tracked and killed")
    p.add_argument("--scratch", metavar="DIR", type=Path, default=None,
                   help="where run sandboxes live (default: /tmp, /var/tmp or /dev/shm, whichever is on the build "
                        "folder's file system, where check's own TEST_DIR is; else /tmp)")
    p.add_argument("--list", action="store_true",
                   help="print the plan (test, format, protocol, run or skip: reason; tab-separated) and exit")
    p.add_argument("--shard", metavar="I/N", type=plan.Shard.parse,
                   help="run the I-th of N duration-balanced shards (default: CI_NODE_INDEX/CI_NODE_TOTAL if set)")
    p.add_argument("--history", metavar="FILE", type=Path,
                   help="duration history to read and update (default: ~/.cache/iotests-run/durations.json)")
    p.add_argument("--pass-env", metavar="NAME", type=_variable_name, action="append", default=[],
                   help="let the tests see this variable although its name looks like a credential "
                        "(TOKEN, SECRET, PASSWORD, ...: those are withheld from tests); repeatable")
    p.add_argument("--no-static-skip", action="store_true",
                   help="start every run, even those whose test declares it cannot apply (check's behaviour)")
    p.add_argument("--version", action="version", version=f"iotests-run {__version__}")
    return p


def _check_choices(kind: str, asked: list[str], known: Sequence[str], version: str) -> list[str]:
    if not asked:
        raise UsageError(f"no {kind} given")
    for value in asked:
        if value not in known:
            raise UsageError(f"unknown {kind}: {printable(value)} (QEMU {version} knows: {', '.join(known)})")
    return list(dict.fromkeys(asked))


def _writable_folder(path: Path, what: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".iotests-run-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SetupError(f"{what} is not writable: {path} ({exc.strerror or exc})") from None
    return path


def check_junit_copy(path: Path) -> Path:
    """--junit FILE: a new file, or one holding JUnit XML already; never a folder or another file."""
    path = path.resolve()
    if path.is_dir():
        raise UsageError(f"--junit {path} is a folder; name a file")
    if path.exists():
        try:
            with path.open("rb") as f:
                head = f.read(512) if path.is_file() else b""
        except OSError as exc:
            raise UsageError(f"--junit {path} cannot be replaced ({exc.strerror or exc})") from None
        if head.strip() and b"<testsuite" not in head:
            raise UsageError(f"--junit {path} exists and is not a JUnit XML file; it is left as it is")
    _writable_folder(path.parent, "folder of --junit")
    return path


def _relative_to_cwd(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)


# While runs finish, results.json and junit.xml are rewritten at most this often (and at the end):
# each rewrite serialises every result so far, and after every run that cost the runner more CPU
# than everything else it does (660 runs of qcow2+raw+qed quick: about 55% of its own CPU).
WRITE_EVERY_S = 1.0


@dataclass
class Reporter:
    """Streams every finished run to the terminal and rewrites the result files.

    A result reaches the files at once when the last rewrite is WRITE_EVERY_S old, else at the
    next tick (the pool ticks every second): never more than about a second late.
    """

    results_dir: Path
    junit_copy: Path | None
    meta: dict[str, Any]
    progress: Progress
    tap: bool
    results: list[Result]
    quarantine: Quarantine = field(default_factory=lambda: Quarantine(frozenset()))
    clock: Callable[[], float] = time.monotonic
    written_at: float = -math.inf
    unwritten: bool = False

    def write_files(self) -> None:
        write_machine_reports(self.results_dir, self.results, self.meta, self.junit_copy)
        self.written_at, self.unwritten = self.clock(), False

    def record(self, result: Result) -> None:
        result = self.quarantine.mark(result)
        self.results.append(result)
        self.progress.finished(result)
        if self.tap:
            print(tap_line(len(self.results), result), flush=True)

    def finished(self, result: Result) -> None:
        self.record(result)
        self.unwritten = True
        self.flush(at_most_every=WRITE_EVERY_S)

    def flush(self, at_most_every: float = 0.0) -> None:
        """Write what is not written yet, unless the last write is younger than at_most_every."""
        if self.unwritten and self.clock() - self.written_at >= at_most_every:
            self.write_files()

    def tick(self, live: Sequence[LiveRun]) -> None:
        self.flush()
        self.progress.tick(live)


def write_machine_reports(folder: Path, results: Sequence[Result], meta: Mapping[str, Any],
                          junit_copy: Path | None = None) -> None:
    """results.json and junit.xml (and its copy where --junit asked), each replaced atomically."""
    write_atomically(folder / "results.json", results_json(results, meta))
    xml = junit_xml(results, attachment_base=_relative_to_cwd(folder.resolve()))
    write_atomically(folder / "junit.xml", xml)
    if junit_copy is not None:
        write_atomically(junit_copy, xml)


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


def write_html(folder: Path, results: Sequence[Result], meta: Mapping[str, Any], title: str) -> None:
    page = html_report(results, meta, title, exists=lambda rel: (folder / rel).is_file())
    write_atomically(folder / "report.html", page)


def _public_environment(tree: QemuTree, formats: list[str], protocols: list[str], perturb: str,
                        user_env: Mapping[str, str]) -> dict[str, Any]:
    """The iotests variables per format-protocol, for results.json (never the user's other variables)."""
    out: dict[str, Any] = {}
    for fmt in formats:
        for proto in protocols:
            env = iotests_environment(tree, fmt, proto, python=sys.executable, test_dir=Path("<TEST_DIR>"),
                                      sock_dir=Path("<SOCK_DIR>"), malloc_perturb=perturb, user_env=user_env)
            names = (*IOTESTS_VARIABLES, *(k for k, _ in tree.check_sets))
            out[f"{fmt}-{proto}"] = {k: env[k] for k in names if k in env}
    return out


def cpu_seconds() -> dict[str, float]:
    """CPU time of the runner itself and of the test processes it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"runner": round(own.ru_utime + own.ru_stime, 2), "children": round(kids.ru_utime + kids.ru_stime, 2)}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def limits_for(args: argparse.Namespace) -> Callable[[Run], Limits]:
    """Each run's limits: --timeout or the shipped per-test override, times the multiplier."""
    table = json.loads(resources.files("iotests_run").joinpath("timeouts.json").read_text())["tests"]

    def limits(run: Run) -> Limits:
        timeout = float(table.get(run.test.key, args.timeout)) * args.timeout_multiplier
        return Limits(timeout_s=timeout, hang_timeout_s=args.hang_timeout, grace_s=args.grace)

    return limits


def _execute_stage(args: argparse.Namespace, tree: QemuTree, runs: list[Run], results_dir: Path, scratch: Path,
                   perturb: str, user_env: Mapping[str, str], reporter: Reporter, admission: Admission) -> bool:
    """Run everything in sandboxes with a watchdog behind them; True when interrupted."""
    isolation = probe(wanted=not args.no_isolation, iotests=tree.iotests, scratch=scratch)
    cgroups = None if args.no_isolation else CgroupRoot.create()
    if isolation.cores:
        precompile(tree.iotests, os.environ)
    reporter.progress.note(f"iotests-run: isolation: {isolation.describe()}; "
                           f"{'a cgroup per run' if cgroups else 'processes tracked by environment marker'}")
    short_root = ShortRoot(scratch)
    marker = short_root.path.name
    watchdog = start_watchdog(marker, short_root.path, cgroups.path if cgroups else None)
    adopter = None if cgroups else Adopter.start()
    if adopter is not None:
        adopter.ignore(watchdog.pid)
    registry = Registry()
    ctx = Context(tree=tree, results=results_dir, short_root=short_root, registry=registry,
                  user_env=user_env, malloc_perturb=perturb, limits=limits_for(args),
                  isolation=isolation, cgroups=cgroups, marker=marker, retries=args.retry, adopter=adopter)
    try:
        execute_all(runs, ctx, admission, reporter.finished, on_tick=lambda: reporter.tick(registry.live()))
        return False
    except KeyboardInterrupt:
        return True
    finally:
        orphans = adopter.close() if adopter is not None else []
        if orphans:
            reporter.meta["orphans"] = orphans
            reporter.progress.note(f"iotests-run: killed {len(orphans)} process(es) left by runs that cannot be "
                                   f"told apart without cgroups: {'; '.join(orphans)}", quiet_too=True)
        short_root.close()
        if cgroups is not None:
            cgroups.close()
        if watchdog.stdin is not None:
            watchdog.stdin.close()
        watchdog.wait()


def _shard_from_ci(environ: Mapping[str, str]) -> plan.Shard | None:
    """GitLab's `parallel:` sets CI_NODE_INDEX and CI_NODE_TOTAL."""
    index, total = environ.get("CI_NODE_INDEX"), environ.get("CI_NODE_TOTAL")
    if index and total:
        try:
            return plan.Shard.parse(f"{index}/{total}")
        except UsageError:
            raise UsageError(f"bad shard from CI_NODE_INDEX={index} CI_NODE_TOTAL={total}") from None
    return None


def _take_shard(shard: plan.Shard, skipped: list[Result], to_run: list[Run], to_run_cost: Mapping[Run, float],
                out: TextIO) -> tuple[list[Result], list[Run]]:
    cost = {**to_run_cost, **{r.run: 0.0 for r in skipped}}
    shards = plan.split(list(cost), cost, shard.total)
    mine = set(shards[shard.index - 1])
    loads = [sum(cost[r] for r in s) for s in shards]
    mean = sum(loads) / len(loads)
    print(f"iotests-run: shard {shard.index}/{shard.total}: {len(mine)} of {len(cost)} runs, predicted "
          f"{loads[shard.index - 1]:.1f} s (mean {mean:.1f} s, largest {max(loads):.1f} s)", file=out, flush=True)
    return [r for r in skipped if r.run in mine], [r for r in to_run if r in mine]


def _without_missing_services(protocols: list[str], build: Path, skipped: list[Result],
                              to_run: list[Run]) -> tuple[list[Result], list[Run]]:
    """Runs over a protocol whose driver or service is missing here are not run, with the reason."""
    missing = {p: why for p in protocols if (why := unavailable(p, build))}
    if not missing:
        return skipped, to_run
    return (skipped + [Result(r, Outcome.NOT_RUN, missing[r.protocol]) for r in to_run if r.protocol in missing],
            [r for r in to_run if r.protocol not in missing])


def _print_plan(skipped: list[Result], runs: list[Run]) -> None:
    rows = [(r.run, f"skip: {r.reason}") for r in skipped] + [(r, "run") for r in runs]
    for run, what in sorted(rows, key=lambda row: (row[0].combo, row[0].test.key)):
        print(f"{run.test.name}\t{run.format}\t{run.protocol}\t{what}")


def run(args: argparse.Namespace, cpus: Cpus) -> int:
    started = time.monotonic()
    # find tests
    tree = open_tree(args.qemu_source, args.qemu_build, os.environ, Path.cwd())
    quarantine = Quarantine.read(args.quarantine) if args.quarantine else Quarantine(frozenset())
    again = reruns.last_failed(Path(args.results)) if args.last_failed else None
    if again is not None and not again:
        print(f"iotests-run: nothing failed in the previous run in {printable(args.results)}")
        return EXIT_OK
    formats = _check_choices("format", sorted({f for _, f, _ in again}) if again else args.format,
                             tree.formats, tree.version)
    protocols = _check_choices("protocol", sorted({p for _, _, p in again}) if again else args.protocol,
                               tree.protocols, tree.version)
    catalog = discover(tree.iotests)
    if again:
        tests = [catalog.tests[k] for k in sorted({k for k, _, _ in again}) if k in catalog.tests]
    else:
        tests = catalog.select(args.tests, args.groups, args.exclude_groups)
    if not tests:
        raise UsageError("no tests selected")
    scratch = (args.scratch or default_scratch(tree.build)).resolve()
    check_outside(scratch, Path(args.results), "--scratch")
    problem = ShortRoot.check_base(scratch)
    if problem:
        raise UsageError(f"--scratch {scratch} {problem}")
    # plan runs
    history_file = args.history or reference_cache() / "durations.json"
    history.check_usable(history_file)
    tree_id = history.tree_identity(tree.version, catalog.tests)
    durations, warning = history.load(history_file, tree_id)
    if warning:
        print(f"iotests-run: warning: {printable(warning)}", file=sys.stderr)
    wanted = [r for r in plan.matrix(tests, formats, protocols)
              if again is None or (r.test.key, r.format, r.protocol) in again]
    skipped, to_run = plan.static_verdicts(wanted, tree.default_machine, "writeback",
                                           read_declarations=not args.no_static_skip)
    skipped, to_run = _without_missing_services(protocols, tree.build, skipped, to_run)
    cost = plan.costs(to_run, durations)
    shard = args.shard or _shard_from_ci(os.environ)
    if shard is not None:
        notes = sys.stderr if args.list or args.tap else sys.stdout
        skipped, to_run = _take_shard(shard, skipped, to_run, cost, notes)
    runs: list[Run] = plan.longest_first(to_run, cost)
    planned = [r.run for r in skipped] + runs
    if args.list:
        _print_plan(skipped, runs)
        return EXIT_OK

    # Every output path is checked before the results folder is claimed (which empties it).
    junit_copy = check_junit_copy(Path(args.junit)) if args.junit else None
    held = claim(Path(args.results), "results folder")
    results_dir = held.path

    # execute in sandboxes, judging each run as it ends, reporting as runs finish
    perturb = malloc_perturb(os.environ)
    tests_env = environment_for_tests(os.environ, args.pass_env)
    user_env = tests_env.variables
    meta: dict[str, Any] = {
        "tool": f"iotests-run {__version__}",
        "qemu": {"version": tree.version, "source": str(tree.source), "build": str(tree.build)},
        "command": ["iotests-run", *sys.argv[1:]],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "jobs": args.jobs,
        "planned": len(planned),
        "skipped_without_starting": len(skipped),
        "environment": _public_environment(tree, formats, protocols, perturb, user_env),
        "withheld_from_tests": list(tests_env.withheld),
        "strict_flaky": args.strict_flaky,
        "complete": False,
    }
    out = sys.stderr if args.tap else sys.stdout
    admission = Admission(args.jobs, cpus.count, cpus.busy_clock(), fixed=args.fixed_jobs)
    # The durations in the history were taken about this many at a time (runs beyond it mostly wait).
    eta = Eta({r.label: cost[r] for r in runs}, admission.floor)
    live = False if args.tap else None  # TAP owns the terminal: no status line redrawn beside it
    progress = Progress(len(planned), out, level=args.level, eta=eta, live=live,
                        quiet_notice_s=args.still_running_every)
    reporter = Reporter(results_dir, junit_copy, meta, progress, args.tap, [], quarantine)
    if args.tap:
        print(HEADER, flush=True)
    reporter.progress.note(f"iotests-run: {len(planned)} runs of QEMU {tree.version} iotests ({tree.source}), "
                           f"{len(skipped)} known not to apply, {admission.describe()}, results in {results_dir}")
    if tests_env.withheld:
        reporter.progress.note(f"iotests-run: withheld from the tests (names look like credentials; --pass-env NAME "
                               f"keeps one): {', '.join(tests_env.withheld)}")
    for result in skipped:
        reporter.record(result)
    reporter.write_files()
    interrupted = _execute_stage(args, tree, runs, results_dir, scratch, perturb, user_env, reporter, admission)

    # report
    results = reporter.results
    meta["complete"] = not interrupted
    meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["wall_s"] = round(time.monotonic() - started, 2)
    meta["cpu_s"] = cpu_seconds()
    reporter.write_files()
    if not interrupted:
        history.save(history_file, tree_id, results)
    title = f"iotests-run {__version__}: QEMU {tree.version} ({tree.source})"
    text = summary_text(results, title, time.monotonic() - started)
    write_atomically(results_dir / "summary.txt", text)
    write_html(results_dir, results, meta, title)
    if args.tap:
        print(tap_plan(len(results)), flush=True)
    reporter.progress.close()
    if args.level == QUIET:
        print(f"{closing_line(results)} (summary: {_relative_to_cwd(results_dir / 'summary.txt')})", file=out)
    else:
        print(f"HTML report: {_relative_to_cwd(results_dir / 'report.html')}", file=out)
        print("\n" + text, end="", file=out, flush=True)
    return exit_status(results, complete=not interrupted, strict_flaky=args.strict_flaky)


def exit_status(results: Sequence[Result], complete: bool, strict_flaky: bool) -> int:
    """The job's exit status, for a run and for a merge alike."""
    if not complete:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if fails_the_job(results, strict_flaky) else EXIT_OK


def merge_main(argv: Sequence[str]) -> int:
    """`iotests-run merge OUT DIR...`: one junit.xml, results.json and summary from CI shards."""
    p = _Parser(prog="iotests-run merge", description="Join the results folders of shards into one.")
    p.add_argument("out", type=Path, help="merged results folder")
    p.add_argument("inputs", type=Path, nargs="+", metavar="DIR", help="results folders of the shards")
    args = p.parse_args(argv)
    merged = merge_folders(args.out, args.inputs)
    out, results, meta = merged.claim.path, merged.results, merged.meta
    write_machine_reports(out, results, meta)
    title = f"iotests-run {__version__}: merged {len(args.inputs)} results folders"
    text = summary_text(results, title, meta["wall_s"])
    write_atomically(out / "summary.txt", text)
    write_html(out, results, meta, title)
    print(text, end="")
    return exit_status(results, complete=meta["complete"], strict_flaky=meta["strict_flaky"])


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["merge"]:
            return merge_main(argv[1:])
        cpus = Cpus.here()
        return run(parse_arguments(make_parser(cpus), argv, os.environ), cpus)
    except (UsageError, SetupError) as exc:
        print(f"iotests-run: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("iotests-run: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
