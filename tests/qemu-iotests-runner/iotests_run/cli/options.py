"""iotests-run's options: the parser, IOTESTS_RUN_ARGS and IOTESTS_RUN_JOBS, and what the options choose.

Bad values raise UsageError (one line, exit 2, in cli.main); values read from the environment
are checked like options, and the command line wins over IOTESTS_RUN_ARGS.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from iotests_run import __version__
from iotests_run.errors import Parser, UsageError
from iotests_run.plan import planner
from iotests_run.report.progress import NORMAL, QUIET, QUIET_NOTICE_S, VERBOSE
from iotests_run.run.admission import Cpus
from iotests_run.run.supervise import HANG_FLOOR_S
from iotests_run.text import printable
from iotests_run.tree.environment import VARIABLE_NAME, Settings

# No healthy quick iotest comes near these (the slowest take about 16 s on 2 busy cores).
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_HANG_TIMEOUT_S = 120.0
DEFAULT_HANG_FACTOR = 5.0
# --valgrind: how much longer the runs may take (hard and hang limits), unless --timeout-multiplier says.
VALGRIND_SLOWDOWN = 10.0
# What QEMU accepts for cache= and aio= (check passes them on as CACHEMODE and AIOMODE).
CACHE_MODES = ("none", "writeback", "writethrough", "directsync", "unsafe")
AIO_MODES = ("threads", "native", "io_uring")


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
_factor = _number(float, 0, False, "0 or more")


def variable_name(value: str) -> str:
    if not VARIABLE_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not a variable name: {value}")
    return value


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def add_environment_options(p: argparse.ArgumentParser) -> None:
    """check's options that shape the tests' environment (Settings), shared by a run and `shell`."""
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("-c", "--cache", metavar="MODE", dest="cachemode", choices=CACHE_MODES,
                       help=f"cache mode, as check's -c ({', '.join(CACHE_MODES)}; default: writeback, "
                            "with CACHEMODE_IS_DEFAULT=true)")
    cache.add_argument("--nocache", dest="cachemode", action="store_const", const="none",
                       help="cache mode none (O_DIRECT), as check's -nocache")
    p.add_argument("-i", "--aio", metavar="MODE", dest="aiomode", default="threads", choices=AIO_MODES,
                   help=f"AIO mode, as check's -i ({', '.join(AIO_MODES)}; default: %(default)s)")
    p.add_argument("-o", "--imgopts", metavar="OPTIONS",
                   help="image creation options (IMGOPTS), as check's -o")
    p.add_argument("--misalign", "-misalign", action="store_true",
                   help="misalign qemu-io's memory allocations (QEMU_IO_OPTIONS gets --misalign), as check's -misalign")
    p.add_argument("--print-qemu", action="store_true",
                   help="QEMU's own stdout and stderr in the test's output (PRINT_QEMU=y), as check's -p "
                        "(-p is our --protocol)")
    p.add_argument("--valgrind", "-valgrind", action="store_true",
                   help="the tests start QEMU under valgrind (VALGRIND_QEMU=y), as check's -valgrind; the hard "
                        f"and hang limits are multiplied by {VALGRIND_SLOWDOWN:g} (or --timeout-multiplier X); "
                        "valgrind's reports are in each test's output")
    p.add_argument("--gdb", "-gdb", action="store_true",
                   help="the tests start QEMU under gdbserver at GDB_OPTIONS (default localhost:12345), waiting "
                        "for a debugger, as check's -gdb; one run at a time (-j 1 when more than one run is "
                        "planned), on the machine's network, no hang limit; each run's start line names the address")


def make_parser(cpus: Cpus | None = None) -> argparse.ArgumentParser:
    p = Parser(prog="iotests-run", description="Run QEMU's iotests in parallel sandboxes, "
                "judged exactly as QEMU's check judges them.")
    p.add_argument("tests", nargs="*", metavar="TEST", help="tests to run (040, 1, backing-file-invalidation)")
    p.add_argument("-f", "--format", type=_csv, default=["qcow2"], help="image formats, comma separated")
    p.add_argument("-p", "--protocol", type=_csv, default=["file"], help="protocols, comma separated")
    p.add_argument("-g", "--groups", type=_csv, default=[], help="include tests of these groups")
    p.add_argument("-x", "--exclude-groups", type=_csv, default=[], help="exclude tests of these groups")
    p.add_argument("--start-from", metavar="TEST",
                   help="of the selected tests (sorted as check sorts them), only TEST and those after it, as "
                        "check's --start-from")
    add_environment_options(p)
    p.add_argument("-d", "--debug", action="store_true",
                   help="start each test with -d (its debug output), as check's -d; with many runs each run's "
                        "output stays its own (the run's output file)")
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
    p.add_argument("--timeout-multiplier", type=_seconds, default=None, metavar="X",
                   help="multiply every hard limit, for slow machines and sanitizer builds (default: 1; with "
                        f"--valgrind: {VALGRIND_SLOWDOWN:g}, and the --hang-timeout too)")
    p.add_argument("--hang-timeout", type=_seconds, default=DEFAULT_HANG_TIMEOUT_S, metavar="SECONDS",
                   help="a run whose processes used no CPU and wrote no output this long is a hang "
                        "(default: %(default)g)")
    p.add_argument("--hang-factor", type=_factor, default=DEFAULT_HANG_FACTOR, metavar="X",
                   help="a run that passed the last time it ran on this tree (duration history) is a hang sooner: "
                        "after X times that run's duration with no CPU and no output, at least "
                        f"{HANG_FLOOR_S:g} s and at most --hang-timeout; 0: --hang-timeout only "
                        "(default: %(default)g)")
    p.add_argument("--grace", type=_seconds, default=3.0, metavar="SECONDS",
                   help="between TERM and KILL when a run is stopped (default: %(default)g)")
    p.add_argument("--retry", type=_count, default=0, metavar="N",
                   help="try a failed, hung, timed-out or crashed run again, up to N times, in a fresh sandbox; "
                        "one that then passes is flaky")
    p.add_argument("--strict-flaky", action="store_true", help="flaky runs fail the job too")
    p.add_argument("--maxfail", type=_jobs, metavar="N",
                   help="after N runs failed (hang, timeout, crash included; after --retry), start no more runs and "
                        "stop those in flight (reported interrupted); exit 1")
    p.add_argument("--failed-first", action=argparse.BooleanOptionalAction, default=True,
                   help="start first the runs that failed the last time they ran on this tree (duration history), "
                        "so that a failure still there shows in seconds (default: on)")
    p.add_argument("--repeat", type=_jobs, metavar="N",
                   help="run every selected run N times, copies side by side in their own sandboxes; "
                        "report the failure rate of each")
    p.add_argument("--until-fail", action="store_true",
                   help="with --repeat: stop a run's copies at its first failure (the others are dropped)")
    p.add_argument("--load", type=_count, default=0, metavar="N",
                   help="N CPU-burning processes beside the runs for the whole invocation, to imitate an "
                        "overloaded machine (default: none)")
    p.add_argument("--bisect", action="store_true",
                   help="for `git bisect run`: a tree that cannot be used (no build, broken build) exits 125 "
                        "(skip this commit), a bad command line 128 (stop the bisection)")
    p.add_argument("--keep-failures", type=_count, default=5, metavar="K",
                   help="with --repeat: keep the artifacts of the first K failing copies of each run "
                        "(default: %(default)s)")
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
    p.add_argument("--flaky-report", action="store_true",
                   help="print the runs that failed in their recent history on this tree (the duration history "
                        "keeps each run's last outcomes) and exit")
    p.add_argument("--list", "-n", "--dry-run", dest="list_plan", action="store_true",
                   help="print the plan (test, format, protocol, run or skip: reason; tab-separated) and exit "
                        "(-n, --dry-run: check's spelling)")
    p.add_argument("--shard", metavar="I/N", type=planner.Shard.parse,
                   help="run the I-th of N duration-balanced shards (default: CI_NODE_INDEX/CI_NODE_TOTAL if set)")
    p.add_argument("--history", metavar="FILE", type=Path,
                   help="duration history to read and update (default: ~/.cache/iotests-run/durations.json)")
    change = p.add_argument_group("running what a change affects (a coverage map of QEMU's functions per run)")
    change.add_argument("--coverage-map", metavar="FILE", type=Path,
                        help="on a gcov build (tools/build-reference-qemu --coverage): record which functions each "
                             "run executed into FILE; with --affected-by: the map to read (default: "
                             "~/.cache/iotests-run/coverage-map.json.gz)")
    what = change.add_mutually_exclusive_group()
    what.add_argument("--affected-by", metavar="REV",
                      help="run only the runs that executed a function the change since REV touches (git diff REV "
                           "in the QEMU source); the others are reported not run, with the reason")
    what.add_argument("--affected-by-diff", metavar="FILE", type=Path,
                      help="as --affected-by, for the change in a patch file (unified diff, a mail with patches)")
    change.add_argument("--affected-by-stale-map", action="store_true",
                        help="use a coverage map although the tree's sources changed since it was made")
    change.add_argument("--affected-by-fallback", action="store_true",
                        help="when the change cannot select runs here (no coverage map, a stale one or one of "
                             "another QEMU, REV unknown in a shallow clone, ...): say why in one line and run "
                             "everything, instead of exit 2 (for CI and Patchew, where the full run is the safe "
                             "default)")
    p.add_argument("--pass-env", metavar="NAME", type=variable_name, action="append", default=[],
                   help="let the tests see this variable although its name looks like a credential "
                        "(TOKEN, SECRET, PASSWORD, ...: those are withheld from tests); repeatable")
    p.add_argument("--no-static-skip", action="store_true",
                   help="start every run, even those whose test declares it cannot apply (check's behaviour)")
    p.add_argument("--version", action="version", version=f"iotests-run {__version__}")
    return p


@dataclass(frozen=True)
class Options:
    """The command line, typed, built once from argparse's namespace (`of`); the stages take it. Every parser
    destination is a field (a test checks both ways); what follows from several options is a property."""

    tests: list[str]
    format: list[str]
    protocol: list[str]
    groups: list[str]
    exclude_groups: list[str]
    start_from: str | None
    cachemode: str | None
    aiomode: str
    imgopts: str | None
    misalign: bool
    debug: bool
    print_qemu: bool
    valgrind: bool
    gdb: bool
    jobs: int
    fixed_jobs: bool
    qemu_source: str | None
    qemu_build: str | None
    results: str
    junit: str | None
    tap: bool
    level: int
    timeout: float
    timeout_multiplier: float | None
    hang_timeout: float
    hang_factor: float
    grace: float
    retry: int
    strict_flaky: bool
    maxfail: int | None
    failed_first: bool
    repeat: int | None
    until_fail: bool
    load: int
    bisect: bool
    keep_failures: int
    last_failed: bool
    quarantine: Path | None
    still_running_every: float
    no_isolation: bool
    scratch: Path | None
    flaky_report: bool
    list_plan: bool
    shard: planner.Shard | None
    history: Path | None
    coverage_map: Path | None
    affected_by: str | None
    affected_by_diff: Path | None
    affected_by_stale_map: bool
    affected_by_fallback: bool
    pass_env: list[str]
    no_static_skip: bool

    @classmethod
    def of(cls, args: argparse.Namespace) -> Options:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @property
    def change_asked(self) -> bool:
        """--affected-by or --affected-by-diff: only the runs the change affects start."""
        return self.affected_by is not None or self.affected_by_diff is not None

    @property
    def recording(self) -> Path | None:
        """--coverage-map FILE without a change to select by: the map to record the runs into."""
        return self.coverage_map if not self.change_asked else None

    @property
    def multiplier(self) -> float:
        """What the hard limits are multiplied by: --timeout-multiplier, else VALGRIND_SLOWDOWN with --valgrind."""
        if self.timeout_multiplier is not None:
            return self.timeout_multiplier
        return VALGRIND_SLOWDOWN if self.valgrind else 1.0

    @property
    def hang_limit(self) -> float:
        """--hang-timeout; with --valgrind times the multiplier (a QEMU under valgrind is slow everywhere); with
        --gdb none (a QEMU waiting for its debugger uses no CPU and writes nothing: no hang)."""
        if self.gdb:
            return math.inf
        return self.hang_timeout * self.multiplier if self.valgrind else self.hang_timeout

    @property
    def settings(self) -> Settings:
        return settings_of(self)


def check_combinations(args: argparse.Namespace | Options) -> None:
    """Options that do not go together, one line each."""
    if args.repeat is not None and args.retry:
        raise UsageError("--repeat counts failures; --retry would hide them: give one of them")
    if args.repeat is not None and args.last_failed:
        raise UsageError("--repeat with --last-failed: repeat named tests instead (iotests-run TEST --repeat N)")
    if args.maxfail is not None and args.repeat is not None:
        raise UsageError("--maxfail with --repeat: --repeat counts failures (use --until-fail to stop a run's copies)")
    if args.start_from is not None and args.last_failed:
        raise UsageError("--start-from with --last-failed: --last-failed chooses the tests (give one of them)")
    if args.until_fail and args.repeat is None:
        raise UsageError("--until-fail needs --repeat N")
    if args.affected_by is not None and not args.affected_by.strip():
        raise UsageError("--affected-by: an empty revision (give one, e.g. HEAD or origin/master)")
    for given, name in ((args.affected_by_stale_map, "--affected-by-stale-map"),
                        (args.affected_by_fallback, "--affected-by-fallback")):
        if given and args.affected_by is None and args.affected_by_diff is None:
            raise UsageError(f"{name} needs --affected-by REV or --affected-by-diff FILE")


def check_gdb(options: Options, planned_runs: int) -> None:
    """--gdb: every QEMU waits for a debugger at the same address; two at once cannot both listen there."""
    if options.gdb and planned_runs > 1 and options.jobs != 1:
        raise UsageError(f"--gdb with {planned_runs} runs: each QEMU waits for a debugger at one address "
                         "(GDB_OPTIONS): add -j 1 to run them one at a time, or name one test")


def settings_of(args: argparse.Namespace | Options) -> Settings:
    """check's own test-environment options: -c/-nocache, -i, -o, -misalign, -d, -p (--print-qemu), -valgrind,
    -gdb."""
    return Settings(aiomode=args.aiomode, cachemode=args.cachemode, imgopts=args.imgopts, misalign=args.misalign,
                    debug=args.debug, print_qemu=args.print_qemu, valgrind=args.valgrind, gdb=args.gdb)


