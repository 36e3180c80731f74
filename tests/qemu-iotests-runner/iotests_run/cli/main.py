"""iotests-run's entry point: the sub-command chosen by the first word, then the stages of a run in order.

    find tests -> (--flaky-report) -> plan runs -> (--list) -> check outputs, claim the results folder
    -> start reporting -> execute in sandboxes, judging each run as it ends -> finish

Each stage is a function of cli/stages.py that hands its work to the package of its concern (tree/,
plan/, affected/, results/, run/, report/). `merge` (cli/merge_command.py), `shell` (cli/shell_command.py)
and `block-state` (debug/block_state_command.py) own their argv.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from iotests_run.cli import merge_command, shell_command, stages
from iotests_run.cli.exits import EXIT_BISECT_ABORT, EXIT_BISECT_SKIP, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from iotests_run.cli.options import Options, check_combinations, check_gdb, make_parser, parse_arguments
from iotests_run.debug import block_state_command
from iotests_run.errors import SetupError, UsageError
from iotests_run.results.folder import claim
from iotests_run.run.admission import Cpus
from iotests_run.text import printable


def run(options: Options, cpus: Cpus) -> int:
    """The stages of a run, in order; --flaky-report and --list end it early."""
    started = time.monotonic()
    found = stages.find_tests(options)
    if found is None:
        return EXIT_OK
    if options.flaky_report:
        return stages.flaky_report(options, found)
    planned = stages.plan_runs(options, found)
    if options.list_plan:
        return stages.list_plan(planned)
    check_gdb(options, len(planned.runs))
    prepared = stages.prepare(options, found)  # every output path checked before the claim empties the folder
    held = claim(Path(options.results), "results folder")
    reporter, admission = stages.start_reporting(options, cpus, found, planned, held, prepared, started)
    complete = stages.execute(options, found, planned, reporter, admission, held, prepared, started)
    return stages.finish(options, found, planned, reporter, complete, started)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["merge"]:
            return merge_command.main(argv[1:])
        if argv[:1] == ["shell"]:
            return shell_command.main(argv[1:])
        if argv[:1] == ["block-state"]:
            return block_state_command.main(argv[1:])
        cpus = Cpus.here()
        options = Options.of(parse_arguments(make_parser(cpus), argv, os.environ))
        check_combinations(options)
        return run(options, cpus)
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
