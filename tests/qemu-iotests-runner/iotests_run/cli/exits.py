"""The exit statuses of iotests-run, and the one rule that picks it for a run and for a merge alike."""

from __future__ import annotations

from collections.abc import Sequence

from iotests_run.model import Result, fails_the_job

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BISECT_SKIP, EXIT_BISECT_ABORT = 125, 128  # with --bisect, for git bisect run


def exit_status(results: Sequence[Result], complete: bool, strict_flaky: bool) -> int:
    """The job's exit status, for a run and for a merge alike."""
    if not complete:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if fails_the_job(results, strict_flaky) else EXIT_OK
