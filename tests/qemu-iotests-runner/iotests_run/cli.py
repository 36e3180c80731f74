"""iotests-run's command line: find tests -> plan runs -> execute in sandboxes -> judge -> report."""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from iotests_run import __version__, history, plan
from iotests_run.discovery import discover
from iotests_run.environment import IOTESTS_VARIABLES, iotests_environment, malloc_perturb
from iotests_run.errors import SetupError, UsageError
from iotests_run.execute import Context, execute_all
from iotests_run.model import Result, Run
from iotests_run.qemu import QemuTree, open_tree, reference_cache
from iotests_run.report.files import write_atomically
from iotests_run.report.junit import junit_xml
from iotests_run.report.progress import Progress
from iotests_run.report.results_json import results_json
from iotests_run.report.summary import summary_text
from iotests_run.report.tap import HEADER, tap_line, tap_plan
from iotests_run.sandbox import Registry, ShortRoot, remove_tree

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Our own files in a results folder; only these are replaced by a new run.
RESULT_FILES = ("junit.xml", "results.json", "summary.txt")


def default_jobs() -> int:
    """Twice the cores: iotests wait on I/O and QEMU start-up; measured fastest on 2 cores (README)."""
    return 2 * (os.cpu_count() or 1)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _jobs(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return n


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="iotests-run", description="Run QEMU's iotests in parallel sandboxes, "
                "judged exactly as QEMU's check judges them.")
    p.add_argument("tests", nargs="*", metavar="TEST", help="tests to run (040, 1, backing-file-invalidation)")
    p.add_argument("-f", "--format", type=_csv, default=["qcow2"], help="image formats, comma separated")
    p.add_argument("-p", "--protocol", type=_csv, default=["file"], help="protocols, comma separated")
    p.add_argument("-g", "--groups", type=_csv, default=[], help="include tests of these groups")
    p.add_argument("-x", "--exclude-groups", type=_csv, default=[], help="exclude tests of these groups")
    p.add_argument("-j", "--jobs", type=_jobs, default=default_jobs(),
                   help="runs in parallel (default: %(default)s, twice the cores)")
    p.add_argument("--qemu-source", metavar="DIR", help="QEMU source tree")
    p.add_argument("--qemu-build", metavar="DIR", help="QEMU build folder")
    p.add_argument("--results", metavar="DIR", default="iotests-results",
                   help="results folder (default: ./iotests-results)")
    p.add_argument("--junit", metavar="FILE", help="also write the JUnit report here")
    p.add_argument("--tap", action="store_true", help="print TAP 13 on stdout (progress goes to stderr)")
    p.add_argument("--version", action="version", version=f"iotests-run {__version__}")
    return p


def _check_choices(kind: str, asked: list[str], known: Sequence[str], version: str) -> list[str]:
    if not asked:
        raise UsageError(f"no {kind} given")
    for value in asked:
        if value not in known:
            raise UsageError(f"unknown {kind}: {value} (QEMU {version} knows: {', '.join(known)})")
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


def prepare_results(folder: Path) -> Path:
    folder = _writable_folder(folder.resolve(), "results folder")
    remove_tree(folder / "runs")
    for name in RESULT_FILES:
        (folder / name).unlink(missing_ok=True)
    return folder


@dataclass
class Reporter:
    """Streams every finished run to the terminal and rewrites the result files."""

    results_dir: Path
    junit_copy: Path | None
    meta: dict[str, Any]
    progress: Progress
    tap: bool
    results: list[Result]

    def write_files(self) -> None:
        write_atomically(self.results_dir / "results.json", results_json(self.results, self.meta))
        xml = junit_xml(self.results)
        write_atomically(self.results_dir / "junit.xml", xml)
        if self.junit_copy is not None:
            write_atomically(self.junit_copy, xml)

    def finished(self, result: Result) -> None:
        self.results.append(result)
        self.progress.finished(result)
        if self.tap:
            print(tap_line(len(self.results), result), flush=True)
        self.write_files()


def _public_environment(tree: QemuTree, formats: list[str], protocols: list[str], perturb: str) -> dict[str, Any]:
    """The iotests variables per format-protocol, for results.json (never the user's other variables)."""
    out: dict[str, Any] = {}
    for fmt in formats:
        for proto in protocols:
            env = iotests_environment(tree, fmt, proto, python=sys.executable, test_dir=Path("<TEST_DIR>"),
                                      sock_dir=Path("<SOCK_DIR>"), malloc_perturb=perturb, user_env=os.environ)
            out[f"{fmt}-{proto}"] = {k: env[k] for k in IOTESTS_VARIABLES if k in env}
    return out


def cpu_seconds() -> dict[str, float]:
    """CPU time of the runner itself and of the test processes it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"runner": round(own.ru_utime + own.ru_stime, 2), "children": round(kids.ru_utime + kids.ru_stime, 2)}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    # find tests
    tree = open_tree(args.qemu_source, args.qemu_build, os.environ, Path.cwd())
    formats = _check_choices("format", args.format, tree.formats, tree.version)
    protocols = _check_choices("protocol", args.protocol, tree.protocols, tree.version)
    tests = discover(tree.iotests).select(args.tests, args.groups, args.exclude_groups)
    if not tests:
        raise UsageError("no tests selected")
    results_dir = prepare_results(Path(args.results))
    junit_copy = None
    if args.junit:
        junit_copy = Path(args.junit).resolve()
        _writable_folder(junit_copy.parent, "folder of --junit")

    # plan runs
    history_file = reference_cache() / "durations.json"
    durations = history.load(history_file)
    runs: list[Run] = plan.longest_first(plan.matrix(tests, formats, protocols), durations)

    # execute in sandboxes, judging each run as it ends, reporting as runs finish
    perturb = malloc_perturb(os.environ)
    meta: dict[str, Any] = {
        "tool": f"iotests-run {__version__}",
        "qemu": {"version": tree.version, "source": str(tree.source), "build": str(tree.build)},
        "command": ["iotests-run", *sys.argv[1:]],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "jobs": args.jobs,
        "planned": len(runs),
        "environment": _public_environment(tree, formats, protocols, perturb),
        "complete": False,
    }
    out = sys.stderr if args.tap else sys.stdout
    reporter = Reporter(results_dir, junit_copy, meta, Progress(len(runs), out), args.tap, [])
    if args.tap:
        print(HEADER, flush=True)
    print(f"iotests-run: {len(runs)} runs of QEMU {tree.version} iotests ({tree.source}), "
          f"{args.jobs} in parallel, results in {results_dir}", file=out, flush=True)
    reporter.write_files()
    short_root = ShortRoot()
    ctx = Context(tree=tree, results=results_dir, short_root=short_root, registry=Registry(),
                  user_env=dict(os.environ), malloc_perturb=perturb)
    interrupted = False
    try:
        execute_all(runs, ctx, args.jobs, reporter.finished)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        short_root.close()

    # report
    results = reporter.results
    meta["complete"] = not interrupted
    meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["wall_s"] = round(time.monotonic() - started, 2)
    meta["cpu_s"] = cpu_seconds()
    reporter.write_files()
    if not interrupted:
        history.save(history_file, durations, results)
    title = f"iotests-run {__version__}: QEMU {tree.version} ({tree.source})"
    text = summary_text(results, title, time.monotonic() - started)
    write_atomically(results_dir / "summary.txt", text)
    if args.tap:
        print(tap_plan(len(results)), flush=True)
    print("\n" + text, end="", file=out, flush=True)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(r.outcome.is_failure for r in results) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = make_parser().parse_args(argv)
        return run(args)
    except (UsageError, SetupError) as exc:
        print(f"iotests-run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("iotests-run: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
