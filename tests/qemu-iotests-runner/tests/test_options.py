"""cli/options.py: the job count and IOTESTS_RUN_ARGS against the command line."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.unit


def test_job_count_from_the_environment_and_make() -> None:
    from iotests_run.cli.options import default_jobs, extra_arguments
    from iotests_run.errors import UsageError

    assert default_jobs({"IOTESTS_RUN_JOBS": "3", "MAKEFLAGS": "rR -j8"}, 2) == 3
    assert default_jobs({"MAKEFLAGS": "rR -j8 --jobserver-auth=fifo:/tmp/x"}, 2) == 8  # make -j8 check-block
    assert default_jobs({"MAKEFLAGS": " -j 6"}, 2) == 6
    assert default_jobs({}, 2) == 8  # 4 x the usable cores
    assert default_jobs({"MAKEFLAGS": "rR -j --jobserver-auth=3,4"}, 2) == 8  # make -j: no number, our default
    assert default_jobs({"MAKEFLAGS": "rR", "IOTESTS_RUN_JOBS": ""}, 3) == 12  # empty: not set
    for bad in ("0", "-3", "abc", "2x"):
        with pytest.raises(UsageError, match=f"IOTESTS_RUN_JOBS: {bad}"):
            default_jobs({"IOTESTS_RUN_JOBS": bad}, 2)
    assert extra_arguments({"IOTESTS_RUN_ARGS": "--retry 1 --quarantine 'a b.txt'"}) == [
        "--retry", "1", "--quarantine", "a b.txt"]
    with pytest.raises(UsageError, match="IOTESTS_RUN_ARGS"):
        extra_arguments({"IOTESTS_RUN_ARGS": "--quarantine 'open"})


def test_the_command_line_wins_over_iotests_run_args() -> None:
    from iotests_run.cli.options import make_parser, parse_arguments
    from iotests_run.errors import UsageError
    from iotests_run.report.progress import NORMAL, QUIET, VERBOSE
    from iotests_run.run.admission import Cpus

    def parse(argv: list[str], extra: str) -> Any:
        return parse_arguments(make_parser(Cpus(2, None)), argv, {"IOTESTS_RUN_ARGS": extra})

    args = parse(["-f", "qcow2", "-v", "001"], "-f raw --retry 2 -q 002")
    assert (args.format, args.retry, args.level, args.tests) == (["qcow2"], 2, VERBOSE, ["001"])
    args = parse([], "-f raw -q 002")
    assert (args.format, args.level, args.tests) == (["raw"], QUIET, ["002"])
    assert parse([], "").level == NORMAL
    with pytest.raises(UsageError, match="IOTESTS_RUN_ARGS: argument -j/--jobs: not a number: x"):
        parse([], "-j x")
