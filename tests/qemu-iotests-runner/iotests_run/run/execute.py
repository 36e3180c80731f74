"""Execute planned runs in one parallel pool of sandboxes and judge each as it ends."""

from __future__ import annotations

import queue
import shlex
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

from iotests_run.affected.recorder import Recorder
from iotests_run.debug.cores import core_files, examine_cores
from iotests_run.debug.diagnostics import Evidence
from iotests_run.debug.sanitizer_reports import Found, cause, keep_reports, read_reports, read_valgrind
from iotests_run.files import move_tree, remove_tree, tree_size
from iotests_run.inputs import read_optional
from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.outputs import KEEP_OUTPUT_BYTES, keep_head_and_tail, report_excerpt
from iotests_run.plan.repeats import DROP, REPORT_AND_STOP, Policy
from iotests_run.results.folder import DIFF, LEAKED, REPRODUCER, SANITIZER, VALGRIND, run_folder, short_of_room
from iotests_run.run.admission import Admission
from iotests_run.run.isolation import Isolation, Overlay
from iotests_run.run.registry import Registry
from iotests_run.run.sandbox import Sandbox, ShortRoot
from iotests_run.run.supervise import Ending, Launch, Limits, Watch, supervise
from iotests_run.run.tracking import MARKER, Trackers
from iotests_run.run.verdict import Verdict, explained, run_verdict, with_core, with_sanitizer
from iotests_run.tree.discovery import reference_output
from iotests_run.tree.environment import TestsBase, child_environment
from iotests_run.tree.qemu import QemuTree
from iotests_run.tree.sanitizers import sanitizer_environment
from iotests_run.tree.services import HOST_NETWORK_PROTOCOLS

OUTPUT_TAIL_BYTES = 4096
CASENOTRUN_BYTES = 64 * 1024
CORE_BUDGET_S = 60.0  # gdb on every core a run left
TICK_S = 1.0
ADMIT_POLL_S = 0.1  # how often the pool asks whether one more run may start


@dataclass(frozen=True)
class Context:
    """What every run of the invocation shares."""

    tree: QemuTree
    results: Path  # the results folder
    short_root: ShortRoot
    registry: Registry
    base: TestsBase
    limits: Callable[[Run], Limits]
    isolation: Isolation = field(default_factory=Isolation)
    trackers: Trackers = field(default_factory=Trackers)
    retries: int = 0
    repeat: Policy | None = None  # --repeat: which failing copies keep artifacts; --until-fail
    epoch: float = field(default_factory=time.monotonic)  # when the invocation began (runs' start offsets)
    coverage: Recorder | None = None  # --coverage-map: what each run executed, from its own counters
    note: Callable[[str], None] | None = None  # a line for people (--gdb: where the run's QEMU waits)


def command_of(test: TestCase, python: str, debug: bool = False) -> list[str]:
    """check starts a test with the interpreter when its first line is exactly the python3 shebang;
    with -d (debug), the test's argv ends with -d."""
    path = str(test.path.resolve())
    argv = [python, path] if test.python else [path]
    return [*argv, "-d"] if debug else argv


def _tail(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - OUTPUT_TAIL_BYTES))
        return f.read().decode("utf-8", errors="replace")


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail_or_nothing(path: Path) -> str:
    try:
        return _tail(path)
    except OSError:
        return ""


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


def _isolation_for(run: Run, isolation: Isolation, gdb: bool = False) -> Isolation:
    """ssh, nfs and rbd reach their service over the machine's network, and with --gdb the developer's gdb
    reaches gdbserver there: no network namespace for them."""
    return replace(isolation, network=False) if run.protocol in HOST_NETWORK_PROTOCOLS or gdb else isolation


def execute_run(run: Run, index: int, ctx: Context) -> Result:
    """Run one test, again in a fresh sandbox after a failure while --retry allows."""
    earlier: list[Result] = []
    for attempt in range(1, ctx.retries + 2):
        result = _attempt(run, str(index) if attempt == 1 else f"{index}-{attempt}", ctx)
        last = attempt == ctx.retries + 1 or ctx.registry.stopping.is_set()
        if not result.outcome.is_failure or last:
            return _with_earlier_attempts(result, earlier)
        earlier.append(_set_aside(result, attempt, ctx.results))
    raise AssertionError("unreachable")


def settle_copy(result: Result, ctx: Context) -> Result | None:
    """--repeat: a copy's result as it is reported (artifacts kept for the first failing copies only),
    or None when it is dropped (--until-fail, after another copy of its run failed)."""
    if ctx.repeat is None or not result.run.copy:
        return result
    decision = ctx.repeat.settle(result)
    if decision == DROP or (result.outcome.is_failure and not ctx.repeat.keeps_artifacts(result)) \
            or (result.outcome is Outcome.PASS and result.artifacts):
        if result.artifacts:
            remove_tree(ctx.results / result.artifacts)
        result = replace(result, artifacts=None, attachments=())
    if decision == REPORT_AND_STOP:
        ctx.registry.stop_copies(result.run.base.label)
    return None if decision == DROP else result


def runner_error(run: Run, exc: Exception) -> Result:
    """An error of the runner itself, recorded as the run's result: no run may go missing."""
    detail = "".join(traceback.format_exception(exc))
    return Result(run, Outcome.ERROR, f"runner error: {exc!r}", artifacts=run_folder(run), output_tail=detail)


def _attempt(run: Run, slot: str, ctx: Context) -> Result:
    try:
        return _execute(run, slot, ctx, run_folder(run))
    except Exception as exc:  # noqa: BLE001 - a failed attempt, which --retry may repeat
        return runner_error(run, exc)


def _set_aside(result: Result, attempt: int, results: Path) -> Result:
    """Keep a failed attempt's artifacts under their own name: runs/FMT-PROTO/TEST-attempt-N."""
    if not result.artifacts or not (results / result.artifacts).exists():
        return result
    aside = f"{result.artifacts}-attempt-{attempt}"
    (results / result.artifacts).rename(results / aside)
    moved = tuple(aside + a[len(result.artifacts):] if a.startswith(result.artifacts + "/") else a
                  for a in result.attachments)
    return replace(result, artifacts=aside, attachments=moved)


def _with_earlier_attempts(final: Result, earlier: list[Result]) -> Result:
    if not earlier:
        return final
    history = "; ".join(f"attempt {i}: {r.outcome.value}: {r.reason}" for i, r in enumerate(earlier, 1))
    attachments = tuple(a for r in earlier for a in r.attachments) + final.attachments
    duration = round(sum(r.duration_s for r in earlier) + final.duration_s, 3)
    if final.outcome is Outcome.PASS:
        return replace(final, outcome=Outcome.FLAKY, reason=f"passed on attempt {len(earlier) + 1}; {history}",
                       artifacts=earlier[0].artifacts, attachments=attachments, duration_s=duration)
    return replace(final, reason=f"{final.reason} (attempt {len(earlier) + 1}; {history})",
                   attachments=attachments, duration_s=duration)


@dataclass(frozen=True)
class _Prepared:
    box: Sandbox
    iotests_env: dict[str, str]  # and a sanitizer build's options without log_path: the reproducer's variables
    launch: Launch


def _prepare(run: Run, slot: str, ctx: Context, rel: str) -> _Prepared:
    """The run's sandbox, environment and command."""
    box = ctx.short_root.sandbox(slot, ctx.results / rel)
    box.create()
    iotests_env = ctx.base.iotests(ctx.tree, run.format, run.protocol, box.test_dir, box.sock_dir)
    env = child_environment(ctx.base.user_env, iotests_env, box.tmp_dir)
    env[MARKER] = ctx.trackers.marker_of(slot)
    sanitizers, perturb = ctx.tree.sanitizers, ctx.base.malloc_perturb
    env.update(sanitizer_environment(sanitizers, box.sanitizer_dir / "report", ctx.base.user_env, perturb))
    by_hand = {**iotests_env, **sanitizer_environment(sanitizers, None, ctx.base.user_env, perturb)}
    if ctx.coverage is not None:
        env.update(ctx.coverage.environment(box.test_dir.parent, env.get("LD_PRELOAD")))
    overlay = Overlay(ctx.tree.iotests, box.upper, box.work) if ctx.isolation.cores else None
    launch = Launch(command_of(run.test, ctx.base.python, ctx.base.settings.debug), run.test.path.parent, env,
                    box.output(run.test.name), _isolation_for(run, ctx.isolation, ctx.base.settings.gdb), overlay)
    return _Prepared(box, by_hand, launch)


def _execute(run: Run, slot: str, ctx: Context, rel: str) -> Result:
    """Prepare, supervise, judge (verdict.py), keep the evidence: one attempt of one run."""
    reference = reference_output(run.test.path, run.format, ctx.tree.default_machine, ctx.base.settings.cache)
    if ctx.registry.stopping.is_set():
        return Result(run, Outcome.INTERRUPTED, f"not started: {ctx.registry.why}")
    prepared = _prepare(run, slot, ctx, rel)
    box, output = prepared.box, prepared.launch.output
    if ctx.base.settings.gdb and ctx.note is not None:
        address = prepared.iotests_env["GDB_OPTIONS"]
        ctx.note(f"iotests-run: {run.label}: started; its QEMU waits for gdb at {address} "
                 f"(gdb -ex 'target remote {address}')")
    qemu_gdb = ctx.tree.source / "scripts" / "qemu-gdb.py"
    watch = Watch(ctx.limits(run), ctx.trackers.for_run(slot), ctx.registry, slot, run.label,
                  box.run_dir / "diagnostics", qemu_gdb if qemu_gdb.is_file() else None)
    start = time.monotonic()
    ending = supervise(prepared.launch, watch)
    duration = round(time.monotonic() - start, 3)
    if ctx.coverage is not None:
        ctx.coverage.collect(run.id.history_key, box.test_dir.parent)
    started = round(start - ctx.epoch, 3)

    verdict = run_verdict(ending.stopped, ending.detail, ending.returncode, reference, output,
                          box.test_dir / f"{run.test.name}.notrun", str(reference), f"{rel}/{output.name}")
    reports = read_reports(box.sanitizer_dir) if ctx.tree.sanitizers else []
    if reports:
        verdict = with_sanitizer(verdict, cause(reports))
    cores = core_files(box.upper) if verdict.outcome is not Outcome.PASS else []
    core_evidence = examine_cores(cores, box.run_dir / "cores", run.test.path.parent, CORE_BUDGET_S,
                                  launched_programs(ctx.tree), perturb_byte(ctx.base.malloc_perturb)) if cores else None
    if core_evidence is not None:
        verdict = with_core(verdict, core_evidence.cause)
    # the cases a Python test skipped (iotests.case_notrun appends a line each), as check reads them
    casenotrun = read_optional(box.test_dir / f"{run.test.name}.casenotrun", CASENOTRUN_BYTES) or ""
    if verdict.outcome is Outcome.PASS and not ending.leaked:
        box.discard()
        return Result(run, Outcome.PASS, "", duration, cpu_s=ending.cpu_s, casenotrun=casenotrun, started_s=started)
    sanitized, reported = _sanitizer_evidence(reports, box, rel, SANITIZER)
    # --valgrind: check's verdict stands (valgrind's exit status 99 failed the test); its report explains it
    found = read_valgrind(box.test_dir, output) if ctx.base.settings.valgrind else []
    valgrind, reported_vg = _sanitizer_evidence(found, box, rel, VALGRIND)
    evidence = [e for e in (sanitized, valgrind, ending.evidence, core_evidence) if e is not None]
    verdict, explanation = explained(verdict, evidence)
    kept = _kept(run, rel, prepared, ending, verdict, evidence, duration, casenotrun)
    return replace(kept, started_s=started, explanation=explanation,
                   attachments=(*kept.attachments, *reported, *reported_vg))


def _sanitizer_evidence(reports: list[Found], box: Sandbox, rel: str, folder: str) -> tuple[Evidence | None,
                                                                                       list[str]]:
    """A sanitizer build's or valgrind's reports kept in the run's artifacts (FOLDER/PROGRAM.PID.txt) and the
    first one explained; nothing when no process reported an error."""
    if not reports:
        return None, []
    return keep_reports(reports, box.run_dir / folder, f"{rel}/{folder}")


def _kept(run: Run, rel: str, prepared: _Prepared, ending: Ending, verdict: Verdict, evidence: list[Evidence],
          duration: float, casenotrun: str) -> Result:
    """A run that did not pass cleanly: its TEST_DIR, output, diff, leaks, reproducer and evidence kept."""
    box, output, leaked = prepared.box, prepared.launch.output, ending.leaked
    notes = [e.summary for e in evidence if e.summary]
    # The verdict stands whatever becomes of its evidence (a full or read-only results disk): what could not be
    # kept is said in the diagnostics, and left out of the attachments.
    tail = _tail_or_nothing(output)
    _keep(notes, "artifacts folder", lambda: box.run_dir.mkdir(parents=True, exist_ok=True))

    def keep(name: str, need: int, write: Callable[[], object]) -> bool:
        full = short_of_room(box.run_dir, need)
        if full:
            notes.append(f"{name} not kept: {full}")
            return False
        return _keep(notes, name, write)

    kept_diff = bool(verdict.diff) and keep(DIFF, len(verdict.diff), lambda: (box.run_dir / DIFF).write_text(
        verdict.diff + "\n", encoding="utf-8"))
    kept_leaks = bool(leaked) and keep(LEAKED, 0, lambda: (box.run_dir / LEAKED).write_text(
        "\n".join(leaked) + "\n", encoding="utf-8"))
    keep(REPRODUCER, 0, lambda: _write_reproducer(box.run_dir / REPRODUCER, run.test.path.parent,
                                                  prepared.iotests_env, prepared.launch.argv))
    kept_output = keep(output.name, min(_size_or_zero(output), KEEP_OUTPUT_BYTES + 4096),
                       lambda: _keep_output(output, box.run_dir / output.name, notes))
    if not keep("TEST_DIR", tree_size(box.test_dir), box.keep):
        box.discard_scratch()
    attachments = ([f"{rel}/{output.name}"] * kept_output + [f"{rel}/{DIFF}"] * kept_diff
                   + [f"{rel}/{LEAKED}"] * kept_leaks)
    if ending.evidence is not None:
        attachments += [f"{rel}/diagnostics/{f}" for f in ending.evidence.files]
    attachments += [f"{rel}/cores/{f}" for e in evidence if e is not ending.evidence for f in e.files]
    return Result(run, verdict.outcome, verdict.reason, duration, diff=report_excerpt(verdict.diff), artifacts=rel,
                  output_tail=tail, diagnostics="\n".join(notes), attachments=tuple(attachments),
                  leaked=leaked, cpu_s=ending.cpu_s, casenotrun=casenotrun)


def launched_programs(tree: QemuTree) -> tuple[Path, ...]:
    """The programs the runner hands the tests (QEMU_PROG, QEMU_IMG_PROG, ...): a core is read with one of these."""
    b = tree.binaries
    return (b.qemu, b.qemu_img, b.qemu_io, b.qemu_nbd, b.qsd)


def perturb_byte(malloc_perturb: str) -> int | None:
    """The byte glibc fills freed memory with under this MALLOC_PERTURB_ (its low byte; 0: no filling)."""
    try:
        return int(malloc_perturb) & 0xFF or None
    except ValueError:
        return None


def _keep_output(output: Path, dest: Path, notes: list[str]) -> None:
    """The output moves to the artifacts; one larger than KEEP_OUTPUT_BYTES keeps only its head and tail."""
    size = _size_or_zero(output)
    if size <= KEEP_OUTPUT_BYTES:
        move_tree(output, dest)
        return
    notes.append(keep_head_and_tail(output, dest, size))


def _keep(notes: list[str], name: str, write: Callable[[], object]) -> bool:
    try:
        write()
        return True
    except OSError as exc:
        notes.append(f"{name} not kept: {exc.strerror or exc}")
        return False


def execute_all(runs: list[Run], ctx: Context, admission: Admission,
                on_result: Callable[[Result], None],
                on_tick: Callable[[], None] | None = None,
                enough: Callable[[], str | None] | None = None) -> list[Result]:
    """Run everything in one pool, in the given order, as `admission` lets runs start;
    report each result (in this thread) as it finishes.

    On SIGINT or SIGTERM every live run is asked to stop, the pool drains (each
    in-flight run reports itself interrupted, runs not started yet say so) and
    KeyboardInterrupt is raised once every run has a result. `enough` (--maxfail), asked after each result,
    stops the pool the same way when it returns why, without the KeyboardInterrupt. While the pool runs,
    those signals only set a flag that the loop reads: an exception raised
    asynchronously inside the queue's wait can leave its lock held, and then
    neither this loop nor any worker's put() ever gets it again.
    """
    finished: queue.Queue[Result | None] = queue.Queue()  # None: a copy dropped (--until-fail)
    results: list[Result] = []
    signalled: list[int] = []
    pending = deque(enumerate(runs))
    running = done = 0
    next_tick = time.monotonic() + TICK_S

    def work(run: Run, index: int) -> None:
        # Every run must reach the queue, or the loop below would wait for it forever.
        try:
            result: Result | None = settle_copy(execute_run(run, index, ctx), ctx)
        except Exception as exc:  # noqa: BLE001 - e.g. setting a failed attempt's artifacts aside
            result = runner_error(run, exc)
        finished.put(result)

    def note_signal(signum: int, frame: FrameType | None) -> None:
        signalled.append(signum)

    in_main = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = {s: signal.signal(s, note_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        with ThreadPoolExecutor(max_workers=admission.jobs, thread_name_prefix="run") as pool:
            while done < len(runs):
                # Once stopping, the runs not started yet go through at once and report themselves interrupted.
                while pending and (ctx.registry.stopping.is_set() or admission.may_start(running)):
                    index, run = pending.popleft()
                    if ctx.repeat is not None and ctx.repeat.dropped(run):  # its run already failed
                        done += 1
                        continue
                    pool.submit(work, run, index)
                    running += 1
                wait = min(ADMIT_POLL_S if pending else TICK_S, max(0.0, next_tick - time.monotonic()))
                try:
                    result: Result | None = finished.get(timeout=wait)
                    running, done = running - 1, done + 1
                except queue.Empty:
                    result = None
                if signalled and not ctx.registry.stopping.is_set():
                    ctx.registry.stop()
                if time.monotonic() >= next_tick:  # (moved on even without on_tick, or the wait above would be 0)
                    next_tick = time.monotonic() + TICK_S
                    if on_tick is not None:
                        on_tick()
                if result is not None:
                    results.append(result)
                    on_result(result)
                    why = enough() if enough is not None and not ctx.registry.stopping.is_set() else None
                    if why:
                        ctx.registry.stop(why)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if signalled:
        raise KeyboardInterrupt
    return results
