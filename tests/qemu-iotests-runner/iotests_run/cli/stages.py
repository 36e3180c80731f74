"""The stages of a run, each a call into the module of its concern: find the tests (tree/), plan the runs
(plan/, affected/), start the reporting (report/), execute them (run/), finish (report/, plan/history).
cli/main.py strings them together."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from iotests_run import __version__
from iotests_run.affected.coverage_map import DEFAULT_FILE as DEFAULT_MAP
from iotests_run.affected.recorder import Recorder
from iotests_run.affected.selection import ChangeOptions, choose_runs
from iotests_run.cli.exits import EXIT_OK, EXIT_USAGE, exit_status
from iotests_run.cli.options import Options
from iotests_run.errors import UsageError
from iotests_run.model import Outcome, Result, Run, RunId, TestCase
from iotests_run.plan import history, planner, seeds
from iotests_run.plan.repeats import Policy, tallies
from iotests_run.report.progress import QUIET, Eta, Progress
from iotests_run.report.summary import closing_line
from iotests_run.report.tap import HEADER, tap_plan
from iotests_run.report.writer import Reporter, incomplete, relative_to_cwd, write_people_reports
from iotests_run.results import reruns
from iotests_run.results.folder import REPORT, SUMMARY, Claim, check_junit_copy, check_outside
from iotests_run.results.meta import Meta
from iotests_run.results.reruns import Quarantine
from iotests_run.run.admission import Admission, Cpus
from iotests_run.run.invocation import Hooks, LimitOptions, cpu_seconds, limits_for, run_in_sandboxes
from iotests_run.run.sandbox import ShortRoot, default_scratch
from iotests_run.text import printable
from iotests_run.tree.discovery import Catalog, discover
from iotests_run.tree.environment import TestsEnvironment, environment_for_tests, malloc_perturb, public_environment
from iotests_run.tree.qemu import QemuTree, open_tree, reference_cache
from iotests_run.tree.services import unavailable


def _check_choices(kind: str, asked: list[str], known: Sequence[str], version: str) -> list[str]:
    if not asked:
        raise UsageError(f"no {kind} given")
    for value in asked:
        if value not in known:
            raise UsageError(f"unknown {kind}: {printable(value)} (QEMU {version} knows: {', '.join(known)})")
    return list(dict.fromkeys(asked))


@dataclass(frozen=True)
class Selection:
    """Found: the tree, the tests, the formats and protocols asked (or --last-failed's runs)."""

    tree: QemuTree
    all_tests: Mapping[str, TestCase]
    tests: list[TestCase]
    formats: list[str]
    protocols: list[str]
    again: set[RunId] | None  # --last-failed's runs
    scratch: Path


@dataclass(frozen=True)
class Planned:
    skipped: list[Result]  # known not to apply, without starting them
    runs: list[Run]  # to start, longest first
    cost: dict[Run, float]  # predicted seconds
    history_file: Path
    tree_id: str
    shard: planner.ShardPart | None = None
    why: Mapping[Run, str] = field(default_factory=dict)  # --affected-by: why each run to start is affected
    change: str | None = None  # --affected-by: "N of M runs affected by <diff>"
    failed_first: int = 0  # --failed-first: how many runs that failed last time start first
    seeds: seeds.Seeds | None = None  # where the predicted durations came from

    @property
    def count(self) -> int:
        return len(self.skipped) + len(self.runs)


def find_tests(options: Options) -> Selection | None:
    """The tree and what to run in it; None when --last-failed finds nothing to run again."""
    tree = open_tree(options.qemu_source, options.qemu_build, os.environ, Path.cwd())
    again = reruns.last_failed(Path(options.results)) if options.last_failed else None
    if again is not None and not again:
        print(f"iotests-run: nothing failed in the previous run in {printable(options.results)}")
        return None
    formats = _check_choices("format", sorted({r.format for r in again}) if again else options.format,
                             tree.formats, tree.version)
    protocols = _check_choices("protocol", sorted({r.protocol for r in again}) if again else options.protocol,
                               tree.protocols, tree.version)
    catalog = discover(tree.iotests)
    if again:
        tests = [catalog.tests[k] for k in sorted({r.key for r in again}) if k in catalog.tests]
    else:
        tests = catalog.select(options.tests, options.groups, options.exclude_groups, options.start_from)
    if not tests:
        raise UsageError("no tests selected")
    scratch = (options.scratch or default_scratch(tree.build)).resolve()
    check_outside(scratch, Path(options.results), "--scratch")
    problem = ShortRoot.check_base(scratch)
    if problem:
        raise UsageError(f"--scratch {scratch} {problem}")
    return Selection(tree, catalog.tests, tests, formats, protocols, again, scratch)


def history_of(options: Options, found: Selection) -> tuple[Path, str]:
    """The duration history file (refused unless it is one) and this tree's identity in it."""
    path = Path(options.history) if options.history else reference_cache() / "durations.json"
    history.check_usable(path, named=bool(options.history))
    return path, history.tree_identity(found.tree.version, found.all_tests, found.tree.sanitizers)


def plan_runs(options: Options, found: Selection) -> Planned:
    """The matrix, less what is known not to apply, this shard's part, longest first."""
    tree = found.tree
    history_file, tree_id = history_of(options, found)
    durations, warning = history.load(history_file, tree_id)
    if warning:
        print(f"iotests-run: warning: {printable(warning)}", file=sys.stderr)
    wanted = [r for r in planner.matrix(found.tests, found.formats, found.protocols)
              if found.again is None or r.id in found.again]
    skipped, to_run = planner.static_verdicts(wanted, tree.default_machine, options.settings.cache,
                                           read_declarations=not options.no_static_skip)
    missing = {p: why for p in found.protocols if (why := unavailable(p, tree.build))}
    skipped, to_run = planner.without_protocols(missing, skipped, to_run)
    reasons: dict[Run, str] = {}
    rank: dict[Run, tuple[int, int]] = {}
    change = None
    if options.affected_by is not None or options.affected_by_diff is not None:
        # the sources' identity: a coverage map recorded on the gcov build serves the sanitizer build of those sources
        sources_id = history.tree_identity(tree.version, found.all_tests)
        chosen = choose_runs(to_run, tree.source, Catalog(tree.iotests, dict(found.all_tests)), sources_id,
                             ChangeOptions(options.affected_by, options.affected_by_diff,
                                           options.coverage_map or reference_cache() / DEFAULT_MAP,
                                           options.affected_by_stale_map, options.affected_by_fallback),
                             lambda text: print(f"iotests-run: warning: {text}", file=sys.stderr))
        to_run, reasons, change, rank = chosen.kept, chosen.why, chosen.line, chosen.rank
        skipped += chosen.unaffected
    shard = options.shard or planner.shard_from_ci(os.environ)
    seeded = seed_durations(tree, durations, to_run, local=shard is None)
    cost = planner.costs(to_run, seeded.durations)
    part = None
    if shard is not None:
        skipped, to_run, part = planner.take_shard(shard, skipped, to_run, cost)
        print(part.note(), file=sys.stderr if options.list_plan or options.tap else sys.stdout, flush=True)
    # Longest first fills the cores; with a change to select by, the runs most specific to it come first (the
    # selection's order), short before long among equals, so that its failure shows soonest.
    runs = planner.closest_first(to_run, rank, cost) if rank else planner.longest_first(to_run, cost)
    first = 0
    if options.failed_first:
        runs, first = planner.failed_first(runs, history.recent(history_file, tree_id))
    if options.repeat is not None:  # copies of one run next to each other, so that they run side by side
        runs = [replace(r, copy=k) for r in runs for k in range(1, options.repeat + 1)]
        cost = {**cost, **{r: cost[r.base] for r in runs}}
    return Planned(skipped, runs, cost, history_file, tree_id, part, reasons, change, first, seeded)


def seed_durations(tree: QemuTree, durations: Mapping[str, float], runs: Sequence[Run],
                   local: bool = True) -> seeds.Seeds:
    """The history's durations, and for runs it lacks check's .last-elapsed-cache, the shipped table, an estimate
    (check's file is read only when needed, so a broken one warns only when it would have been used). A shard
    leaves check's file out (local=False): it is this machine's, and every shard of a pipeline must compute the
    same split from what they all share (the history restored from one cache, the package's table)."""
    check: dict[str, float] = {}
    if local and any(r.id.history_key not in durations for r in runs):
        check, warning = seeds.check_cache(tree.build)
        if warning:
            print(f"iotests-run: warning: {printable(warning)}", file=sys.stderr)
    version, family = seeds.table_for(tree.version, seeds.shipped_table())
    return seeds.seed(runs, durations, check, family, version)


@dataclass(frozen=True)
class Prepared:
    """Checked and made before the results folder is claimed (which empties it): the outputs named, the
    coverage recorder, the tests' environment and MALLOC_PERTURB_."""

    junit_copy: Path | None
    recorder: Recorder | None
    tests_env: TestsEnvironment
    perturb: str


def prepare(options: Options, found: Selection) -> Prepared:
    junit_copy = check_junit_copy(Path(options.junit)) if options.junit else None
    recorder = (Recorder.start(options.recording, found.tree.source, found.tree.build, found.scratch)
                if options.recording is not None else None)
    return Prepared(junit_copy, recorder, environment_for_tests(os.environ, options.pass_env),
                    malloc_perturb(os.environ))


def start_reporting(options: Options, cpus: Cpus, found: Selection, planned: Planned, held: Claim,
                    prepared: Prepared, started: float) -> tuple[Reporter, Admission]:
    """The writer of the results folder and the terminal, fed the runs known not to apply at once."""
    tree = found.tree
    meta = Meta(
        tool=f"iotests-run {__version__}",
        qemu={"version": tree.version, "source": str(tree.source), "build": str(tree.build)},
        command=["iotests-run", *sys.argv[1:]],
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        jobs=options.jobs,
        planned=planned.count,
        skipped_without_starting=len(planned.skipped),
        environment=public_environment(tree, found.formats, found.protocols, prepared.perturb,
                                         prepared.tests_env.variables,
                                         options.settings),
        withheld_from_tests=list(prepared.tests_env.withheld),
        strict_flaky=options.strict_flaky,
        repeat=options.repeat,
        load=options.load,
        history_tree=planned.tree_id,  # `merge --history` records the shards' runs under it
        affected=planned.change,
        shard=planned.shard.record() if planned.shard is not None else None,
        durations_from=dict(planned.seeds.counts(planned.runs)) if planned.seeds and planned.runs else None,
    )
    admission = Admission(options.jobs, cpus.count, cpus.busy_clock(), fixed=options.fixed_jobs)
    # The durations in the history were taken about this many at a time (runs beyond it mostly wait).
    eta = Eta({r.label: planned.cost[r] for r in planned.runs}, admission.floor)
    live = False if options.tap else None  # TAP owns the terminal: no status line redrawn beside it
    progress = Progress(planned.count, sys.stderr if options.tap else sys.stdout, level=options.level, eta=eta,
                        live=live, quiet_notice_s=options.still_running_every, repeat=options.repeat or 0)
    quarantine = Quarantine.read(options.quarantine) if options.quarantine else Quarantine(frozenset())
    past = history.recent(planned.history_file, planned.tree_id)  # as it was before this invocation
    held.reserve()
    reporter = Reporter(held.path, prepared.junit_copy, meta, progress, options.tap, [],
                        lambda r: history.with_past(quarantine.mark(r), past), busy=cpus.busy_clock(), epoch=started,
                        release=held.release)
    if options.tap:
        print(HEADER, flush=True)
    change = f" ({planned.change})" if planned.change else ""
    change += f"; {planned.failed_first} that failed last time first" if planned.failed_first else ""
    change += f"; {planned.seeds.line(planned.runs)}" if planned.seeds and planned.runs else ""
    progress.note(f"iotests-run: {planned.count} runs of QEMU {tree.version} iotests ({tree.source}){change}, "
                  f"{len(planned.skipped)} known not to apply, {admission.describe()}, results in {held.path}")
    if prepared.tests_env.withheld:
        progress.note(f"iotests-run: withheld from the tests (names look like credentials; --pass-env NAME "
                      f"keeps one): {', '.join(prepared.tests_env.withheld)}")
    for result in planned.skipped:
        reporter.record(result)
    reporter.write_files()
    return reporter, admission


def finish(options: Options, found: Selection, planned: Planned, reporter: Reporter, complete: bool,
           started: float) -> int:
    """The closing files and lines; the exit status."""
    results, meta = reporter.results, reporter.meta
    meta.complete = complete and meta.stopped is None  # every planned run ended (the exit status: see below)
    meta.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta.wall_s = round(time.monotonic() - started, 2)
    meta.cpu_s = cpu_seconds()
    if options.repeat is not None:
        meta.repeats = [t.record() for t in tallies(results)]
    reporter.release()  # the last writes get the room held back for them
    failed = reporter.write_files(say=False)
    if complete:
        try:
            history.save(planned.history_file, planned.tree_id, results)
        except OSError as exc:
            reporter.progress.note(f"iotests-run: warning: the duration history {planned.history_file} was not "
                                   f"saved ({exc.strerror or exc})", quiet_too=True)
    title = f"iotests-run {__version__}: QEMU {found.tree.version} ({found.tree.source})"
    text, more = write_people_reports(reporter.results_dir, results, meta, title, meta.wall_s)
    failed += more
    if options.tap:
        print(tap_plan(len(results)), flush=True)
    reporter.progress.close()
    out = sys.stderr if options.tap else sys.stdout
    if options.level == QUIET:
        print(f"{closing_line(results)} (summary: {relative_to_cwd(reporter.results_dir / SUMMARY)})",
              file=out)
    else:
        print(f"HTML report: {relative_to_cwd(reporter.results_dir / REPORT)}", file=out)
        print("\n" + text, end="", file=out, flush=True)
    if failed:
        print(f"iotests-run: {incomplete(reporter.results_dir, failed, len(results))}", file=sys.stderr)
        return EXIT_USAGE
    return exit_status(results, complete=complete, strict_flaky=options.strict_flaky)


def execute(options: Options, found: Selection, planned: Planned, reporter: Reporter, admission: Admission,
            held: Claim, prepared: Prepared, started: float) -> bool:
    """Every planned run in its sandbox, each judged and reported as it ends; False when interrupted."""
    recorder, tests_env = prepared.recorder, prepared.tests_env
    limits = limits_for(LimitOptions(options.timeout, options.multiplier, options.hang_limit,
                                     options.grace, 0.0 if options.gdb else options.hang_factor,
                                     history.last_passed(planned.history_file, planned.tree_id)))
    ended = run_in_sandboxes(planned.runs, found.tree, results_dir=held.path, scratch=found.scratch,
                             isolate=not options.no_isolation, perturb=prepared.perturb,
                             user_env=tests_env.variables, environ=os.environ, limits=limits, retries=options.retry,
                             admission=admission, settings=options.settings,
                             repeat=Policy(options.keep_failures, options.until_fail) if options.repeat else None,
                             load=options.load, epoch=started, coverage=recorder,
                             hooks=Hooks(reporter.finished, reporter.tick, reporter.progress.note,
                                         enough=lambda: enough(options.maxfail, reporter.results),
                                         alert=lambda text: reporter.progress.note(text, quiet_too=True)))
    if ended.orphans:
        reporter.meta.orphans = ended.orphans
        reporter.progress.note(f"iotests-run: killed {len(ended.orphans)} process(es) left by runs that cannot be "
                               f"told apart without cgroups: {'; '.join(ended.orphans)}", quiet_too=True)
    if recorder is not None and options.recording is not None:
        recorder.finish(options.recording, planned.tree_id, reporter.results,
                        lambda text: reporter.progress.note(text, quiet_too=True))
    if ended.stopped:
        interrupted = sum(r.outcome is Outcome.INTERRUPTED for r in reporter.results)
        reporter.meta.stopped = f"{ended.stopped}: {interrupted} runs stopped or not started"
        reporter.progress.note(f"iotests-run: {reporter.meta.stopped}", quiet_too=True)
    return not ended.interrupted


def enough(maxfail: int | None, results: Sequence[Result]) -> str | None:
    """--maxfail N: why to start no more runs, once N runs have failed (as the job counts failures)."""
    if maxfail is None:
        return None
    failed = sum(r.outcome.is_failure and not r.quarantined for r in results)
    return f"--maxfail {maxfail} reached ({failed} failed)" if failed >= maxfail else None


def flaky_report(options: Options, found: Selection) -> int:
    """--flaky-report: the runs that failed in their recent history on this tree."""
    print(history.flaky_report(history.recent(*history_of(options, found))), end="")
    return EXIT_OK


def list_plan(planned: Planned) -> int:
    """--list: the plan, a line per run (run, or skip with the reason)."""
    if planned.change:
        print(f"iotests-run: {planned.change}", file=sys.stderr)
    print(planner.listing(planned.skipped, planned.runs, planned.why), end="")
    return EXIT_OK
