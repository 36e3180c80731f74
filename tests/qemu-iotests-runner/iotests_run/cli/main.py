"""iotests-run's command line: the parser, the stages of a run in order, the exit status.

    find tests -> plan runs -> (--list) -> claim the results folder -> execute in sandboxes,
    judging each run as it ends -> report

Each stage is a short function here that hands its work to the module of its concern
(discovery, plan, results_folder, invocation/execute, report.writer); `merge` is a
sub-command with its own parser.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

from iotests_run import __version__
from iotests_run.affected.coverage_map import DEFAULT_FILE as DEFAULT_MAP
from iotests_run.affected.coverage_map import Recorder, check_target, save_recording
from iotests_run.affected.selection import ChangeOptions, choose_runs
from iotests_run.cli.options import check_combinations, make_parser, parse_arguments, settings_of
from iotests_run.debug import block_state_command
from iotests_run.errors import Parser, SetupError, UsageError
from iotests_run.model import Result, Run, TestCase, fails_the_job
from iotests_run.plan import history, planner
from iotests_run.plan.repeats import Policy, tallies
from iotests_run.report.progress import QUIET, Eta, Progress
from iotests_run.report.summary import closing_line
from iotests_run.report.tap import HEADER, tap_plan
from iotests_run.report.writer import (
    Reporter,
    incomplete,
    relative_to_cwd,
    write_machine_reports,
    write_people_reports,
)
from iotests_run.results import reruns
from iotests_run.results.folder import Claim, check_outside, claim
from iotests_run.results.merge import merge_folders
from iotests_run.results.reruns import Quarantine
from iotests_run.run.admission import Admission, Cpus
from iotests_run.run.invocation import Hooks, LimitOptions, cpu_seconds, limits_for, run_in_sandboxes
from iotests_run.run.sandbox import ShortRoot, default_scratch
from iotests_run.text import printable
from iotests_run.tree.discovery import Catalog, discover
from iotests_run.tree.environment import (
    environment_for_tests,
    malloc_perturb,
    public_environment,
)
from iotests_run.tree.qemu import QemuTree, open_tree, reference_cache
from iotests_run.tree.services import unavailable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BISECT_SKIP, EXIT_BISECT_ABORT = 125, 128  # with --bisect, for git bisect run
def _check_choices(kind: str, asked: list[str], known: Sequence[str], version: str) -> list[str]:
    if not asked:
        raise UsageError(f"no {kind} given")
    for value in asked:
        if value not in known:
            raise UsageError(f"unknown {kind}: {printable(value)} (QEMU {version} knows: {', '.join(known)})")
    return list(dict.fromkeys(asked))


# The stages of a run ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """Found: the tree, the tests, the formats and protocols asked (or --last-failed's runs)."""

    tree: QemuTree
    all_tests: Mapping[str, TestCase]
    tests: list[TestCase]
    formats: list[str]
    protocols: list[str]
    again: set[tuple[str, str, str]] | None  # --last-failed: (test key, format, protocol)
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

    @property
    def count(self) -> int:
        return len(self.skipped) + len(self.runs)


def find_tests(args: argparse.Namespace) -> Selection | None:
    """The tree and what to run in it; None when --last-failed finds nothing to run again."""
    tree = open_tree(args.qemu_source, args.qemu_build, os.environ, Path.cwd())
    again = reruns.last_failed(Path(args.results)) if args.last_failed else None
    if again is not None and not again:
        print(f"iotests-run: nothing failed in the previous run in {printable(args.results)}")
        return None
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
    return Selection(tree, catalog.tests, tests, formats, protocols, again, scratch)


def history_of(args: argparse.Namespace, found: Selection) -> tuple[Path, str]:
    """The duration history file (refused unless it is one) and this tree's identity in it."""
    path = Path(args.history) if args.history else reference_cache() / "durations.json"
    history.check_usable(path, named=bool(args.history))
    return path, history.tree_identity(found.tree.version, found.all_tests, found.tree.sanitizers)


def plan_runs(args: argparse.Namespace, found: Selection) -> Planned:
    """The matrix, less what is known not to apply, this shard's part, longest first."""
    tree = found.tree
    history_file, tree_id = history_of(args, found)
    durations, warning = history.load(history_file, tree_id)
    if warning:
        print(f"iotests-run: warning: {printable(warning)}", file=sys.stderr)
    wanted = [r for r in planner.matrix(found.tests, found.formats, found.protocols)
              if found.again is None or (r.test.key, r.format, r.protocol) in found.again]
    skipped, to_run = planner.static_verdicts(wanted, tree.default_machine, settings_of(args).cache,
                                           read_declarations=not args.no_static_skip)
    missing = {p: why for p in found.protocols if (why := unavailable(p, tree.build))}
    skipped, to_run = planner.without_protocols(missing, skipped, to_run)
    reasons: dict[Run, str] = {}
    change = None
    if args.affected_by is not None or args.affected_by_diff is not None:
        # the sources' identity: a coverage map recorded on the gcov build serves the sanitizer build of those sources
        sources_id = history.tree_identity(tree.version, found.all_tests)
        chosen = choose_runs(to_run, tree.source, Catalog(tree.iotests, dict(found.all_tests)), sources_id,
                             ChangeOptions(args.affected_by, args.affected_by_diff,
                                           args.coverage_map or reference_cache() / DEFAULT_MAP,
                                           args.affected_by_stale_map, args.affected_by_fallback),
                             lambda text: print(f"iotests-run: warning: {text}", file=sys.stderr))
        to_run, reasons, change = chosen.kept, chosen.why, chosen.line
        skipped += chosen.unaffected
    cost = planner.costs(to_run, durations)
    shard = args.shard or planner.shard_from_ci(os.environ)
    part = None
    if shard is not None:
        skipped, to_run, part = planner.take_shard(shard, skipped, to_run, cost)
        print(part.note(), file=sys.stderr if args.list or args.tap else sys.stdout, flush=True)
    runs = planner.longest_first(to_run, cost)
    if args.repeat is not None:  # copies of one run next to each other, so that they run side by side
        runs = [replace(r, copy=k) for r in runs for k in range(1, args.repeat + 1)]
        cost = {**cost, **{r: cost[r.base] for r in runs}}
    return Planned(skipped, runs, cost, history_file, tree_id, part, reasons, change)


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"folder of --junit is not writable: {path.parent} ({exc.strerror or exc})") from None
    return path


def start_reporting(args: argparse.Namespace, cpus: Cpus, found: Selection, planned: Planned,
                    held: Claim, junit_copy: Path | None, user_env: Mapping[str, str], withheld: Sequence[str],
                    perturb: str, started: float) -> tuple[Reporter, Admission]:
    """The writer of the results folder and the terminal, fed the runs known not to apply at once."""
    tree = found.tree
    meta: dict[str, Any] = {
        "tool": f"iotests-run {__version__}",
        "qemu": {"version": tree.version, "source": str(tree.source), "build": str(tree.build)},
        "command": ["iotests-run", *sys.argv[1:]],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "jobs": args.jobs,
        "planned": planned.count,
        "skipped_without_starting": len(planned.skipped),
        "environment": public_environment(tree, found.formats, found.protocols, perturb, user_env,
                                          settings_of(args)),
        "withheld_from_tests": list(withheld),
        "strict_flaky": args.strict_flaky,
        "repeat": args.repeat,
        "load": args.load,
        "complete": False,
        "history_tree": planned.tree_id,  # `merge --history` records the shards' runs under it
    }
    if planned.change:
        meta["affected"] = planned.change
    if planned.shard is not None:
        meta["shard"] = planned.shard.record()
    admission = Admission(args.jobs, cpus.count, cpus.busy_clock(), fixed=args.fixed_jobs)
    # The durations in the history were taken about this many at a time (runs beyond it mostly wait).
    eta = Eta({r.label: planned.cost[r] for r in planned.runs}, admission.floor)
    live = False if args.tap else None  # TAP owns the terminal: no status line redrawn beside it
    progress = Progress(planned.count, sys.stderr if args.tap else sys.stdout, level=args.level, eta=eta,
                        live=live, quiet_notice_s=args.still_running_every, repeat=args.repeat or 0)
    quarantine = Quarantine.read(args.quarantine) if args.quarantine else Quarantine(frozenset())
    past = history.recent(planned.history_file, planned.tree_id)  # as it was before this invocation
    held.reserve()
    reporter = Reporter(held.path, junit_copy, meta, progress, args.tap, [],
                        lambda r: history.with_past(quarantine.mark(r), past), busy=cpus.busy_clock(), epoch=started,
                        release=held.release)
    if args.tap:
        print(HEADER, flush=True)
    change = f" ({planned.change})" if planned.change else ""
    progress.note(f"iotests-run: {planned.count} runs of QEMU {tree.version} iotests ({tree.source}){change}, "
                  f"{len(planned.skipped)} known not to apply, {admission.describe()}, results in {held.path}")
    if withheld:
        progress.note(f"iotests-run: withheld from the tests (names look like credentials; --pass-env NAME "
                      f"keeps one): {', '.join(withheld)}")
    for result in planned.skipped:
        reporter.record(result)
    reporter.write_files()
    return reporter, admission


def finish(args: argparse.Namespace, found: Selection, planned: Planned, reporter: Reporter, complete: bool,
           started: float) -> int:
    """The closing files and lines; the exit status."""
    results, meta = reporter.results, reporter.meta
    meta["complete"] = complete
    meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["wall_s"] = round(time.monotonic() - started, 2)
    meta["cpu_s"] = cpu_seconds()
    if args.repeat is not None:
        meta["repeats"] = [t.record() for t in tallies(results)]
    reporter.release()  # the last writes get the room held back for them
    failed = reporter.write_files(say=False)
    if complete:
        try:
            history.save(planned.history_file, planned.tree_id, results)
        except OSError as exc:
            reporter.progress.note(f"iotests-run: warning: the duration history {planned.history_file} was not "
                                   f"saved ({exc.strerror or exc})", quiet_too=True)
    title = f"iotests-run {__version__}: QEMU {found.tree.version} ({found.tree.source})"
    text, more = write_people_reports(reporter.results_dir, results, meta, title, meta["wall_s"])
    failed += more
    if args.tap:
        print(tap_plan(len(results)), flush=True)
    reporter.progress.close()
    out = sys.stderr if args.tap else sys.stdout
    if args.level == QUIET:
        print(f"{closing_line(results)} (summary: {relative_to_cwd(reporter.results_dir / 'summary.txt')})",
              file=out)
    else:
        print(f"HTML report: {relative_to_cwd(reporter.results_dir / 'report.html')}", file=out)
        print("\n" + text, end="", file=out, flush=True)
    if failed:
        print(f"iotests-run: {incomplete(reporter.results_dir, failed, len(results))}", file=sys.stderr)
        return EXIT_USAGE
    return exit_status(results, complete=complete, strict_flaky=args.strict_flaky)


def run(args: argparse.Namespace, cpus: Cpus) -> int:
    started = time.monotonic()
    found = find_tests(args)
    if found is None:
        return EXIT_OK
    if args.flaky_report:
        print(history.flaky_report(history.recent(*history_of(args, found))), end="")
        return EXIT_OK
    planned = plan_runs(args, found)
    if args.list:
        if planned.change:
            print(f"iotests-run: {planned.change}", file=sys.stderr)
        print(planner.listing(planned.skipped, planned.runs, planned.why), end="")
        return EXIT_OK
    # Every output path is checked before the results folder is claimed (which empties it).
    junit_copy = check_junit_copy(Path(args.junit)) if args.junit else None
    recorder = None
    if args.coverage_map and args.affected_by is None and args.affected_by_diff is None:
        check_target(args.coverage_map)
        recorder = Recorder(found.tree.source, found.tree.build)
        recorder.check_build()
        recorder.prepare(Path(tempfile.mkdtemp(prefix="iotr-gcov-", dir=found.scratch)))
    held = claim(Path(args.results), "results folder")
    tests_env = environment_for_tests(os.environ, args.pass_env)
    perturb = malloc_perturb(os.environ)
    reporter, admission = start_reporting(args, cpus, found, planned, held, junit_copy, tests_env.variables,
                                          tests_env.withheld, perturb, started)
    limits = limits_for(LimitOptions(args.timeout, args.timeout_multiplier, args.hang_timeout, args.grace,
                                     args.hang_factor, history.last_passed(planned.history_file, planned.tree_id)))
    ended = run_in_sandboxes(planned.runs, found.tree, results_dir=held.path, scratch=found.scratch,
                             isolate=not args.no_isolation, perturb=perturb, user_env=tests_env.variables,
                             environ=os.environ, limits=limits, retries=args.retry, admission=admission,
                             settings=settings_of(args),
                             repeat=Policy(args.keep_failures, args.until_fail) if args.repeat else None,
                             load=args.load, epoch=started, coverage=recorder,
                             hooks=Hooks(reporter.finished, reporter.tick, reporter.progress.note))
    if ended.orphans:
        reporter.meta["orphans"] = ended.orphans
        reporter.progress.note(f"iotests-run: killed {len(ended.orphans)} process(es) left by runs that cannot be "
                               f"told apart without cgroups: {'; '.join(ended.orphans)}", quiet_too=True)
    if recorder is not None:
        save_recording(args.coverage_map, recorder, planned.tree_id, reporter.results,
                       lambda text: reporter.progress.note(text, quiet_too=True))
    return finish(args, found, planned, reporter, not ended.interrupted, started)


def exit_status(results: Sequence[Result], complete: bool, strict_flaky: bool) -> int:
    """The job's exit status, for a run and for a merge alike."""
    if not complete:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if fails_the_job(results, strict_flaky) else EXIT_OK


def merge_main(argv: Sequence[str]) -> int:
    """`iotests-run merge OUT DIR...`: one junit.xml, results.json and summary from CI shards."""
    p = Parser(prog="iotests-run merge", description="Join the results folders of shards into one.")
    p.add_argument("out", type=Path, help="merged results folder")
    p.add_argument("inputs", type=Path, nargs="+", metavar="DIR", help="results folders of the shards")
    p.add_argument("--history", metavar="FILE", type=Path,
                   help="record the merged runs' durations and outcomes in this duration history")
    args = p.parse_args(argv)
    merged = merge_folders(args.out, args.inputs, ["iotests-run", "merge", *argv], args.history)
    out, results, meta = merged.claim.path, merged.results, merged.meta
    for warning in merged.warnings:
        print(f"iotests-run merge: warning: {warning}", file=sys.stderr)
    if merged.left_out > len(merged.warnings):
        print(f"iotests-run merge: warning: {merged.left_out - len(merged.warnings)} more files of the inputs' runs/ "
              "left out (links, FIFOs, devices or beyond the caps)", file=sys.stderr)
    if meta["missing_shards"]:
        print(f"iotests-run merge: not among the inputs: shard {', '.join(meta['missing_shards'])}; "
              "the merged results are incomplete", file=sys.stderr)
    failed = write_machine_reports(out, results, meta)
    title = f"iotests-run {__version__}: merged {len(args.inputs)} results folders"
    text, more = write_people_reports(out, results, meta, title, meta["wall_s"])
    print(text, end="")
    if failed or more:
        print(f"iotests-run merge: {incomplete(out, failed + more, len(results))}", file=sys.stderr)
        return EXIT_USAGE
    if args.history is not None and merged.tree is not None:  # what the complete shards ran, as they would
        history.save(args.history, merged.tree, [r for r in results if meta["shards"][r.shard - 1]["complete"]])
    return exit_status(results, complete=meta["complete"], strict_flaky=meta["strict_flaky"])


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["merge"]:
            return merge_main(argv[1:])
        if argv[:1] == ["block-state"]:
            return block_state_command.main(argv[1:])
        cpus = Cpus.here()
        args = parse_arguments(make_parser(cpus), argv, os.environ)
        check_combinations(args)
        return run(args, cpus)
    except (UsageError, SetupError) as exc:
        print(f"iotests-run: {printable(str(exc))}", file=sys.stderr)
        if "--bisect" in argv:  # git bisect run: 125 skips this commit, above 127 stops the bisection
            return EXIT_BISECT_SKIP if isinstance(exc, SetupError) else EXIT_BISECT_ABORT
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("iotests-run: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
