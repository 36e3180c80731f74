"""Proof by mutants that `--affected-by` misses nothing the full run catches.

    tools/mutants [--version 7.2] [--formats qcow2,raw] [--group quick] [--only NAME,...]
                  [--retry 0] [--hang-timeout 30] [--hang-factor 5] [--timeout 90]

Each mutant breaks one function of QEMU's block layer (an error returned at its entry, or its
first condition negated), is built incrementally, and is run twice: (a) the whole selection, (b)
`--affected-by HEAD` with the coverage map made before any mutation. A mutant is found by a run
when a run fails that passed on the unmutated tree. Printed per mutant: runs failing in (a) and
(b), runs executed, wall time, the time to the first failure that found the mutant in (a) and in (b)
(--affected-by orders the change's runs most specific first), and the wall time of (c) `--affected-by HEAD
--maxfail 1` (what a developer at the desk runs); then the totals: mutants (a) found that (b) missed (goal:
none), (b)'s wall time against (a)'s summed over the driver-local mutants (goal: at most 30%), and the medians
of the times to the first failure (goals: (b) <= 5 s and <= 15% of (a); (c) <= 10 s).

Everything lives in ~/.cache/iotests-run/mutants-<version>/: a copy of the reference sources
(a git checkout, so that --affected-by has a REV) with its own build, the map, and results.jsonl
(a line per mutant, appended as each ends; a mutant recorded there is not run again, so the tool
resumes where it stopped). The map is made on the reference tree's gcov build (tools/build-reference-qemu
--coverage); its time and size are printed beside the plain run's. A mutant often makes QEMU hang
(a write that fails pauses or stalls a job) or loop (a test retrying what now fails): the runs get
--hang-timeout 30 and --timeout 90 (the slowest quick test takes 12 s here) and --retry 0 (a run
the unmutated baseline fails counts for no mutant), which keep those runs short in (a) and (b) alike; results recorded
with other settings are run again. Like a CI pipeline that pulls master's duration history, every
run of a mutant starts from a copy of the unmutated tree's history (baseline-history.json, from a
first unmutated run; the baseline itself is the second one), so --hang-factor judges each run by its
passing duration, and one mutant's runs never plan another's.

A run that fails in (a) but was not selected by (b) is either a miss of the map or a flaky run: it
is run again CONFIRM times with the mutant in place (confirmations.json), and the table says which.

Families: "format" (a format or protocol driver's files), "job" (a block job's), "filter" (a filter
driver's) are driver-local; "generic" (block.c, io.c, qemu-img.c, ...) is not. Besides wall time, each
mutant's "clean share" is the part of the unmutated run's summed run time that (b)'s runs took: what
--affected-by costs for a change to the same function that breaks nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from tabulate import tabulate

from iotests_tools import REPO, summary
from iotests_tools import RUNNER as RUNNER_FOLDER

RUNNER = [sys.executable, "-m", "iotests_run"]
# What the iotests run (a full `ninja` would also relink every unit test against the block layer).
CONFIRM = 5  # copies of a failing run that --affected-by did not select, run again with the mutant
TARGETS = ["qemu-img", "qemu-io", "qemu-nbd", "storage-daemon/qemu-storage-daemon", "qemu-system-x86_64"]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    function: str
    kind: str  # "error": return an error at entry; "flip": negate the first `if (...) {` of the body
    family: str  # "format", "job" or "filter" (one driver's file: driver-local), "generic" (block layer, a tool)

    @property
    def local(self) -> bool:
        return self.family != "generic"


MUTANTS = [
    Mutant("qcow2-pwritev", "block/qcow2.c", "qcow2_co_pwritev_part", "error", "format"),
    Mutant("qcow2-truncate", "block/qcow2.c", "qcow2_co_truncate", "flip", "format"),
    Mutant("qcow2-make-empty", "block/qcow2.c", "qcow2_make_empty", "error", "format"),
    Mutant("qcow2-host-offset", "block/qcow2-cluster.c", "qcow2_get_host_offset", "flip", "format"),
    Mutant("qcow2-check", "block/qcow2-refcount.c", "qcow2_check_refcounts", "flip", "format"),
    Mutant("qcow2-snapshot", "block/qcow2-snapshot.c", "qcow2_snapshot_create", "error", "format"),
    Mutant("qcow2-bitmaps-rw", "block/qcow2-bitmap.c", "qcow2_reopen_bitmaps_rw", "error", "format"),
    Mutant("raw-offset", "block/raw-format.c", "raw_adjust_offset", "flip", "format"),
    Mutant("vmdk-pwritev", "block/vmdk.c", "vmdk_co_pwritev", "error", "format"),
    Mutant("qed-writev", "block/qed.c", "bdrv_qed_co_writev", "error", "format"),
    Mutant("nbd-client-preadv", "block/nbd.c", "nbd_client_co_preadv", "error", "format"),
    Mutant("nbd-server-info", "nbd/server.c", "nbd_negotiate_handle_info", "flip", "format"),
    Mutant("mirror-run", "block/mirror.c", "mirror_run", "error", "job"),
    Mutant("backup-run", "block/backup.c", "backup_run", "error", "job"),
    Mutant("commit-run", "block/commit.c", "commit_run", "flip", "job"),
    Mutant("stream-run", "block/stream.c", "stream_run", "error", "job"),
    Mutant("block-copy-task", "block/block-copy.c", "block_copy_task_entry", "error", "job"),
    Mutant("throttle-open", "block/throttle.c", "throttle_open", "flip", "filter"),
    Mutant("blkdebug-config", "block/blkdebug.c", "read_config", "flip", "filter"),
    Mutant("cor-open", "block/copy-on-read.c", "cor_open", "error", "filter"),
    Mutant("quorum-open", "block/quorum.c", "quorum_open", "flip", "filter"),
    Mutant("null-preadv", "block/null.c", "null_co_preadv", "error", "filter"),
    Mutant("cbw-open", "block/copy-before-write.c", "cbw_open", "error", "filter"),
    Mutant("io-write-zeroes", "block/io.c", "bdrv_co_pwrite_zeroes", "error", "generic"),
    Mutant("block-amend", "block.c", "bdrv_amend_options", "error", "generic"),
    Mutant("snapshot-goto", "block/snapshot.c", "bdrv_snapshot_goto", "flip", "generic"),
    Mutant("img-map", "qemu-img.c", "img_map", "error", "generic"),
    Mutant("img-compare", "qemu-img.c", "img_compare", "flip", "generic"),
]


def say(text: str) -> None:
    print(f"mutants: {text}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload,no-any-return]


def reference(version: str, coverage: bool) -> tuple[Path, Path]:
    cmd = [str(REPO / "tools" / "build-reference-qemu"), "--version", version] + (["--coverage"] if coverage else [])
    out = run(cmd, capture_output=True, check=True).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return Path(values["QEMU_SOURCE"]), Path(values["QEMU_BUILD"])


def workspace(version: str, top: Path) -> tuple[Path, Path]:
    """A git copy of the reference sources with its own build, configured as the reference build was."""
    src, build = top / "src", top / "build"
    if (build / "qemu-img").is_file() and (src / ".git").is_dir():
        return src, build
    ref_src, ref_build = reference(version, coverage=False)
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(build, ignore_errors=True)
    say(f"copying {ref_src} to {src}")
    shutil.copytree(ref_src, src, symlinks=True)
    git = ["git", "-C", str(src), "-c", "user.name=mutants", "-c", "user.email=mutants@invalid"]
    run([*git, "init", "-q"], check=True)
    run([*git, "add", "-A", "-f"], check=True)
    run([*git, "commit", "-qm", "reference sources"], check=True)
    status = (ref_build / "config.status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("exec "))
    args = shlex.split(line)[2:-1]  # after `exec CONFIGURE`, before "$@"
    build.mkdir()
    say(f"configuring and building {build} (several minutes)")
    run([str(src / "configure"), *args], cwd=build, check=True, capture_output=True)
    run(["ninja", "-C", str(build)], check=True, capture_output=True)
    for fw in (ref_build / "qemu-bundle").rglob("*"):
        target = build / fw.relative_to(ref_build)
        if fw.is_symlink() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.readlink(fw))
    return src, build


def mutate(src: Path, mutant: Mutant) -> str:
    """Apply the mutant; return the changed line (or raise ValueError when the function is not found)."""
    path = src / mutant.path
    lines = path.read_text().splitlines(keepends=True)
    # a definition starts in the first column (QEMU's style), never in a comment: " * ... mirror_run() will"
    head = re.compile(rf"^(?![\s/*#])(.*[\s*])?{re.escape(mutant.function)}\(")
    start = next(i for i, line in enumerate(lines) if head.match(line) and not line.rstrip().endswith(";"))
    brace = next(i for i in range(start, len(lines)) if lines[i].rstrip() == "{")
    end = next(i for i in range(brace, len(lines)) if lines[i].rstrip() == "}")
    if mutant.kind == "error":
        lines.insert(brace + 1, "    return -EIO; /* mutant */\n")
        changed = lines[brace + 1]
    else:
        cond = next(i for i in range(brace, end) if re.match(r"^\s+if \(.*\) \{$", lines[i].rstrip()))
        text = lines[cond].rstrip("\n")
        lines[cond] = re.sub(r"^(\s+)if \((.*)\) \{$", r"\1if (!(\2)) { /* mutant */", text) + "\n"
        changed = lines[cond]
    path.write_text("".join(lines))
    return changed.strip()


@contextmanager
def applied(src: Path, build: Path, mutant: Mutant) -> Iterator[str]:
    """The mutant in the sources and built (yields the changed line); the sources restored afterwards,
    whatever happened. ValueError when the function is not found or the mutant does not build."""
    try:
        try:
            changed = mutate(src, mutant)
        except StopIteration:  # (a generator must not let it out)
            raise ValueError("function not found") from None
        built = run(["ninja", "-C", str(build), *TARGETS], capture_output=True)
        if built.returncode != 0:
            raise ValueError(f"does not build: {built.stdout.strip()[-300:]}")
        yield changed
    finally:
        run(["git", "-C", str(src), "checkout", "-q", "--", "."], check=True)


def unmutated_history(top: Path) -> Path:
    """A fresh copy of the unmutated tree's duration history, for one run of a mutant."""
    copy = top / "d.json"
    shutil.copyfile(top / "baseline-history.json", copy)
    return copy


def iotests(src: Path, build: Path, args: argparse.Namespace, results: Path, *extra: str,
            select: list[str] | None = None, history: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(RUNNER_FOLDER))
    started = time.monotonic()
    limits = ["--retry", str(args.retry), "--hang-timeout", str(args.hang_timeout), "--timeout", str(args.timeout),
              "--hang-factor", str(args.hang_factor)]
    selection = select if select is not None else ["-f", args.formats, "-g", args.group]
    proc = run([*RUNNER, *selection, *limits, "--qemu-source", str(src),
                "--qemu-build", str(build), "--results", str(results),
                "--history", str(history or results.parent / "map-history.json"), "-q", *extra],
               capture_output=True, env=env)
    wall = time.monotonic() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"iotests-run exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    data = json.loads((results / "results.json").read_text())
    failing = sorted(f"{r['format']}-{r['protocol']}/{r['test']}" for r in data["runs"]
                     if r["outcome"] in ("fail", "timeout", "hang", "crash"))
    ran = {f"{r['format']}-{r['protocol']}/{r['test']}": float(r["duration_s"] or 0) for r in data["runs"]
           if r.get("started_s") is not None}  # not known beforehand not to apply
    why = {f"{r['format']}-{r['protocol']}/{r['test']}": f"{r['outcome']}: {r['reason'][:200]}" for r in data["runs"]
           if r["outcome"] in ("fail", "timeout", "hang", "crash")}
    # when each failing run ended, in seconds after the invocation began (its reason is known from then on)
    ends = {f"{r['format']}-{r['protocol']}/{r['test']}": round(float(r["started_s"]) + float(r["duration_s"] or 0), 2)
            for r in data["runs"]
            if r["outcome"] in ("fail", "timeout", "hang", "crash") and r.get("started_s") is not None}
    return {"failing": failing, "executed": len(ran), "wall_s": round(wall, 1), "durations": ran, "why": why,
            "ends": ends}


def first_found_s(got: dict[str, Any], found: list[str]) -> float | None:
    """Seconds from the start to the end of the first run that found the mutant (a failure the unmutated tree
    does not have); None when none did."""
    ends = [got["ends"][k] for k in found if k in got.get("ends", {})]
    return min(ends) if ends else None


def confirm(src: Path, build: Path, args: argparse.Namespace, top: Path, runs: list[str]) -> dict[str, int]:
    """Runs the full run found failing but --affected-by did not select, run again CONFIRM times each
    with the mutant in place: how many copies failed (0: the full run's failure did not come back,
    a flaky run rather than a miss of the map)."""
    failed: dict[str, int] = {}
    for key in runs:
        combo, test = key.split("/", 1)
        fmt, proto = combo.split("-", 1)
        got = iotests(src, build, args, top / "r-confirm", "--repeat", str(CONFIRM),
                      select=["-f", fmt, "-p", proto, test], history=unmutated_history(top))
        failed[key] = sum(1 for k in got["failing"] if k == key)
    return failed


def settings(args: argparse.Namespace) -> dict[str, object]:
    # "record": 2 since the times to the first failure and the --maxfail 1 run are recorded (issue 29)
    return {"formats": args.formats, "group": args.group, "retry": args.retry, "hang_timeout": args.hang_timeout,
            "timeout": args.timeout, "hang_factor": args.hang_factor, "record": 2}


def clean_share(picked: dict[str, Any], baseline: dict[str, Any]) -> float:
    """The share of the unmutated run's summed run time that (b)'s runs took there: what (b) costs for a
    change to the same functions that breaks nothing."""
    clean: dict[str, float] = baseline["durations"]
    chosen: dict[str, float] = picked["durations"]
    whole = sum(clean.values())
    return sum(clean.get(k, 0.0) for k in chosen) / whole if whole else 0.0


def make_map(args: argparse.Namespace, top: Path) -> Path:
    cmap = top / "map.json.gz"
    if cmap.is_file():
        return cmap
    top.mkdir(parents=True, exist_ok=True)
    src, build = reference(args.version, coverage=True)
    say(f"recording the coverage map on {build}")
    shutil.rmtree(top / "r-map", ignore_errors=True)
    got = iotests(src, build, args, top / "r-map", "--coverage-map", str(cmap))
    plain_src, plain_build = reference(args.version, coverage=False)
    plain = iotests(plain_src, plain_build, args, top / "r-plain")
    print(f"map: {got['wall_s']} s on the gcov build, plain run {plain['wall_s']} s on the reference build "
          f"({float(got['wall_s']) / float(plain['wall_s']):.2f}x); {cmap.stat().st_size // 1024} KB", flush=True)
    return cmap


def unselected(row: dict[str, Any]) -> list[str]:
    """Runs that failed in the full run although --affected-by did not run them: what the map missed."""
    return [k for k in row["full"]["found"] if k not in row["affected"]["durations"]]


def confirm_unselected(src: Path, build: Path, args: argparse.Namespace, top: Path,
                       rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """confirm() for every recorded mutant with such runs, once (kept in confirmations.json)."""
    saved = top / "confirmations.json"
    kept = json.loads(saved.read_text()) if saved.is_file() else {}
    if kept.get("settings") != settings(args):
        kept = {"settings": settings(args), "mutants": {}}
    by_name = {m.name: m for m in MUTANTS}
    for row in rows:
        runs = unselected(row)
        if not runs or row["mutant"] in kept["mutants"]:
            continue
        say(f"{row['mutant']}: running {runs} again {CONFIRM} times with the mutant")
        with applied(src, build, by_name[row["mutant"]]):
            kept["mutants"][row["mutant"]] = confirm(src, build, args, top, runs)
        saved.write_text(json.dumps(kept))
    return kept["mutants"]  # type: ignore[no-any-return]


def factor(value: str) -> float:
    """--hang-factor's type: a number, 0 or more, refused here rather than by each iotests-run it starts."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value}") from None
    if not number >= 0:  # "not >=" also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more: {value}")
    return number


def main() -> int:
    p = argparse.ArgumentParser(description=summary(__doc__).splitlines()[0])
    p.add_argument("--version", default="7.2")
    p.add_argument("--formats", default="qcow2,raw")
    p.add_argument("--group", default="quick")
    p.add_argument("--only", default="", help="mutant names, comma separated")
    p.add_argument("--retry", type=int, default=0)
    p.add_argument("--hang-timeout", type=int, default=30, help="seconds (the slowest quick test takes 12 s here)")
    p.add_argument("--timeout", type=int, default=90)
    p.add_argument("--hang-factor", type=factor, default=5.0, help="as iotests-run's (its default)")
    args = p.parse_args()
    chosen_names = set(args.only.split(",")) if args.only else {m.name for m in MUTANTS}
    unknown = chosen_names - {m.name for m in MUTANTS}
    if unknown:
        say(f"no such mutant: {', '.join(sorted(unknown))}")
        return 2
    chosen = [m for m in MUTANTS if m.name in chosen_names]
    cache = Path(os.environ.get("IOTESTS_RUN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME")
                                                             or Path.home() / ".cache") / "iotests-run")
    top = cache / f"mutants-{args.version}"
    cmap = make_map(args, top)
    src, build = workspace(args.version, top)
    git = ["git", "-C", str(src)]
    run([*git, "checkout", "-q", "--", "."], check=True)
    run(["ninja", "-C", str(build), *TARGETS], check=True, capture_output=True)
    saved = top / "baseline.json"
    baseline = json.loads(saved.read_text()) if saved.is_file() else {}
    if baseline.get("settings") != settings(args):
        (top / "baseline-history.json").unlink(missing_ok=True)
        iotests(src, build, args, top / "r-base", history=top / "baseline-history.json")  # learns the durations
        baseline = {**iotests(src, build, args, top / "r-base", history=unmutated_history(top)),
                    "settings": settings(args)}
    saved.write_text(json.dumps(baseline))
    print(f"baseline: {len(baseline['failing'])} runs failing without a mutant: {baseline['failing']}", flush=True)
    base_failing = set(baseline["failing"])
    journal = top / "results.jsonl"
    rows = [json.loads(line) for line in journal.read_text().splitlines()] if journal.is_file() else []
    other = [r["mutant"] for r in rows if r.get("settings") != settings(args)]
    if other:
        say(f"{len(other)} mutants in {journal} were run with other settings: left out, run again")
    rows = [r for r in rows if r.get("settings") == settings(args) and (not args.only or r["mutant"] in chosen_names)]
    done = {r["mutant"] for r in rows}
    with journal.open("a") as log:
        for mutant in chosen:
            if mutant.name in done:
                continue
            try:
                with applied(src, build, mutant) as changed:
                    full = iotests(src, build, args, top / "r-full", history=unmutated_history(top))
                    picked = iotests(src, build, args, top / "r-affected", "--affected-by", "HEAD",
                                     "--coverage-map", str(cmap), history=unmutated_history(top))
                    # (c) what a developer at the desk runs: the change's runs, stopping at the first failure
                    red = iotests(src, build, args, top / "r-maxfail", "--affected-by", "HEAD", "--maxfail", "1",
                                  "--coverage-map", str(cmap), history=unmutated_history(top))
            except ValueError as exc:
                say(f"{mutant.name}: not applied ({exc})")
                continue
            found_full = sorted(set(full["failing"]) - base_failing)
            found_picked = sorted(set(picked["failing"]) - base_failing)
            record = {"mutant": mutant.name, "path": mutant.path, "function": mutant.function, "change": changed,
                      "family": mutant.family, "local": mutant.local, "settings": settings(args),
                      "clean_share": round(clean_share(picked, baseline), 4),
                      "full": {**full, "found": found_full, "first_s": first_found_s(full, found_full)},
                      "affected": {**picked, "found": found_picked, "first_s": first_found_s(picked, found_picked)},
                      "maxfail": {"wall_s": red["wall_s"], "found": sorted(set(red["failing"]) - base_failing)}}
            log.write(json.dumps(record) + "\n")
            log.flush()
            rows.append(record)
            print(f"{mutant.name}: full {len(found_full)} failing / {full['executed']} started / {full['wall_s']} s; "
                  f"affected {len(found_picked)} / {picked['executed']} / {picked['wall_s']} s", flush=True)
    confirmations = confirm_unselected(src, build, args, top, rows)
    run(["ninja", "-C", str(build), *TARGETS], capture_output=True)
    rows.sort(key=lambda r: [m.name for m in MUTANTS].index(r["mutant"]))
    table = [[r["mutant"], r["family"], r["function"], len(r["full"]["found"]), len(r["affected"]["found"]),
              len(unselected(r)), r["full"]["executed"], r["affected"]["executed"], r["full"]["wall_s"],
              r["affected"]["wall_s"], r["full"]["first_s"], r["affected"]["first_s"], r["maxfail"]["wall_s"],
              f"{100 * r['clean_share']:.1f}%"] for r in rows]
    print(tabulate(table, headers=["mutant", "family", "function", "found (a)", "found (b)", "not selected",
                                   "started (a)", "started (b)", "wall s (a)", "wall s (b)", "1st red s (a)",
                                   "1st red s (b)", "wall s (c)", "clean share (b)"]))
    found = [r for r in rows if r["full"]["found"] and r["full"]["first_s"] is not None
             and r["affected"]["first_s"] is not None]
    if found:
        first_a = median(r["full"]["first_s"] for r in found)
        first_b = median(r["affected"]["first_s"] for r in found)
        shares = median(r["affected"]["first_s"] / r["full"]["first_s"] for r in found if r["full"]["first_s"])
        print(f"\ntime to the first failure over the {len(found)} mutants the full run found (median): (a) full run "
              f"{first_a:.1f} s, (b) --affected-by {first_b:.1f} s ({100 * shares:.0f}% of (a), median of the ratios; "
              f"goal <= 5 s and <= 15%); (c) --affected-by --maxfail 1 wall "
              f"{median(r['maxfail']['wall_s'] for r in found):.1f} s (goal <= 10 s)")
    missed = [r["mutant"] for r in rows if r["full"]["found"] and not r["affected"]["found"]]
    blind = [r["mutant"] for r in rows if not r["full"]["found"]]
    print(f"\nmissed by --affected-by (found by the full run only): {len(missed)} {missed}")
    again = [(r["mutant"], k, confirmations.get(r["mutant"], {}).get(k)) for r in rows for k in unselected(r)]
    print(f"runs failing in (a) that (b) did not select: {len(again)}; run again {CONFIRM} times with the mutant, "
          f"the failure came back for {[(m, k, n) for m, k, n in again if n]} and not for "
          f"{[(m, k) for m, k, n in again if n == 0]} (flaky in (a), not a miss of the map)")
    print(f"not found by the full run either (the tests' blind spots): {blind}")
    local = [r for r in rows if r["local"]]
    for label, part in (("driver-local mutants", local),
                        ("driver-local mutants the full run found", [r for r in local if r["full"]["found"]]),
                        *((f"{family} mutants", [r for r in local if r["family"] == family])
                          for family in ("format", "job", "filter")),
                        ("all mutants", rows)):
        full_s = sum(r["full"]["wall_s"] for r in part)
        picked_s = sum(r["affected"]["wall_s"] for r in part)
        if full_s:
            shares = sorted(r["clean_share"] for r in part)
            print(f"{label} ({len(part)}): --affected-by {picked_s:.0f} s against the full run's {full_s:.0f} s "
                  f"({100 * picked_s / full_s:.0f}%); unmutated, its runs took {100 * shares[len(shares) // 2]:.1f}% "
                  f"of the run time (median)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
