"""Execute planned runs in one parallel pool of sandboxes and judge each as it ends."""

from __future__ import annotations

import shlex
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from iotests_run.environment import Settings, child_environment, iotests_environment
from iotests_run.model import Outcome, Result, Run
from iotests_run.qemu import QemuTree
from iotests_run.sandbox import Registry, ShortRoot, run_in_session
from iotests_run.verdict import judge, reference_output

PYTHON_SHEBANG = "#!/usr/bin/env python3"
OUTPUT_TAIL_BYTES = 4096


@dataclass(frozen=True)
class Context:
    tree: QemuTree
    results: Path
    short_root: ShortRoot
    registry: Registry
    user_env: Mapping[str, str]
    malloc_perturb: str
    python: str = sys.executable
    settings: Settings = field(default_factory=Settings)


def run_folder(run: Run) -> str:
    """The run's artifacts folder, relative to the results folder."""
    return f"runs/{run.combo}/{run.test.name}"


def command_of(test: Path, python: str) -> list[str]:
    """check starts a test with the interpreter when its first line is exactly the python3 shebang."""
    with test.open("rb") as f:
        first = f.readline()
    if first.rstrip().decode("utf-8", errors="replace") == PYTHON_SHEBANG:
        return [python, str(test.resolve())]
    return [str(test.resolve())]


def _tail(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - OUTPUT_TAIL_BYTES))
        return f.read().decode("utf-8", errors="replace")


def _write_reproducer(path: Path, cwd: Path, iotests_env: Mapping[str, str], argv: list[str]) -> None:
    """A script that re-runs the test by hand with the environment iotests-run gave it."""
    fresh = {"TEST_DIR": '"$t/scratch"', "SOCK_DIR": '"$t/s"'}
    lines = ["#!/bin/sh", "# Re-run this test by hand with the environment iotests-run gave it.",
             't=$(mktemp -d /tmp/iotr-XXXXXX) && mkdir "$t/scratch" "$t/s" || exit 1',
             f"cd {shlex.quote(str(cwd))} || exit 1", "env \\"]
    lines += [f"  {k}={fresh.get(k) or shlex.quote(v)} \\" for k, v in iotests_env.items()]
    lines += ["  " + " ".join(shlex.quote(a) for a in argv), "status=$?",
              'echo "TEST_DIR was $t/scratch" >&2', "exit $status"]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)


def execute_run(run: Run, index: int, ctx: Context) -> Result:
    """Run one test in a fresh sandbox; any runner error becomes the run's result."""
    rel = run_folder(run)
    try:
        return _execute(run, index, ctx, rel)
    except Exception as exc:  # noqa: BLE001 - no run may go missing
        detail = "".join(traceback.format_exception(exc))
        return Result(run, Outcome.FAIL, f"runner error: {exc!r}", artifacts=rel, output_tail=detail)


def _execute(run: Run, index: int, ctx: Context, rel: str) -> Result:
    tree = ctx.tree
    cachemode = ctx.settings.cachemode or "writeback"
    reference = reference_output(run.test.path, run.format, tree.default_machine, cachemode)
    if not reference.is_file():
        return Result(run, Outcome.NOT_RUN, f"No qualified output (expected {reference})")
    if ctx.registry.stopping.is_set():
        return Result(run, Outcome.INTERRUPTED, "not started: the runner was interrupted")

    box = ctx.short_root.sandbox(index, ctx.results / rel)
    box.create()
    iotests_env = iotests_environment(tree, run.format, run.protocol, python=ctx.python,
                                      test_dir=box.test_dir, sock_dir=box.sock_dir,
                                      malloc_perturb=ctx.malloc_perturb, user_env=ctx.user_env,
                                      settings=ctx.settings)
    env = child_environment(ctx.user_env, iotests_env, box.tmp_dir)
    argv = command_of(run.test.path, ctx.python)
    output = box.run_dir / f"{run.test.name}.out.bad"
    notrun = box.test_dir / f"{run.test.name}.notrun"

    start = time.monotonic()
    returncode = run_in_session(argv, run.test.path.parent, env, output, ctx.registry)
    duration = round(time.monotonic() - start, 3)

    if ctx.registry.stopping.is_set():
        verdict_outcome, reason, diff = Outcome.INTERRUPTED, "interrupted by the user", ""
    else:
        v = judge(returncode, reference, output, notrun, str(reference), f"{rel}/{output.name}")
        verdict_outcome, reason, diff = v.outcome, v.reason, v.diff
    if verdict_outcome is Outcome.PASS:
        box.discard()
        return Result(run, Outcome.PASS, "", duration)
    box.keep()
    if diff:
        (box.run_dir / "diff.txt").write_text(diff + "\n", encoding="utf-8")
    _write_reproducer(box.run_dir / "reproduce.sh", run.test.path.parent, iotests_env, argv)
    return Result(run, verdict_outcome, reason, duration, diff=diff, artifacts=rel,
                  output_tail=_tail(output))


def execute_all(runs: list[Run], ctx: Context, jobs: int,
                on_result: Callable[[Result], None],
                on_start: Callable[[Run], None] | None = None) -> list[Result]:
    """Run everything in one pool; report each result as it finishes.

    On KeyboardInterrupt every live process group is killed, the pool drains
    (each in-flight run reports itself interrupted) and the interrupt is re-raised
    after every run has a result.
    """
    results: list[Result] = []
    interrupted = False
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="run")

    def started(run: Run, index: int) -> Result:
        if on_start is not None and not ctx.registry.stopping.is_set():
            on_start(run)
        return execute_run(run, index, ctx)

    pending: dict[Future[Result], Run] = {pool.submit(started, run, i): run for i, run in enumerate(runs)}
    try:
        while pending:
            try:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    run = pending[fut]
                    result = fut.result() if not fut.cancelled() else Result(
                        run, Outcome.INTERRUPTED, "not started: the runner was interrupted")
                    results.append(result)
                    del pending[fut]
                    on_result(result)
            except KeyboardInterrupt:
                interrupted = True
                ctx.registry.kill_all()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if interrupted:
        raise KeyboardInterrupt
    return results
