"""`--affected-by REV` / `--affected-by-diff FILE`: run only what a change can affect.

A diff's hunks are mapped, on their old side, onto the functions of the coverage map
(coverage_map.py); a run is affected when it executed one of the changed functions. The rules
err on the side of running (README, "Running what a change affects"):

- a hunk in a mapped source file but outside every function of the map (a comment above a
  function, a return type on the line before its name, a macro, a struct, a static table), a
  file not in the map (headers without inline functions, build files, configure, qapi, a new
  file), and a changed function the counters cannot tell about: every run;
- a file changed by several sections of the diff (a series whose patches touch it one after the
  other: their line numbers are not all the base's), a deleted or renamed mapped file: all of
  that file's functions;
- a test, or one of its reference outputs: that test's runs;
- common.rc or common.config: every bash test; iotests.py or QEMU's python/ package: every Python
  test; another helper of tests/qemu-iotests: the tests naming it (through other helpers too);
  check, testenv.py, testrunner.py and the rest of the iotests machinery, and this runner: every run;
- a run the map does not hold (another format, a new test): that run.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from iotests_run import inputs
from iotests_run.affected import coverage_map
from iotests_run.affected.coverage_map import CoverageMap, Span, source_digest
from iotests_run.affected.diff import FileChange, Hunk, parse_diff
from iotests_run.errors import UsageError
from iotests_run.model import Outcome, Result, Run
from iotests_run.text import printable
from iotests_run.tree.discovery import Catalog

IOTESTS = "tests/qemu-iotests/"
RUNNER = "tests/qemu-iotests-runner/"
BASH_COMMON = {"common.rc", "common.config"}
PYTHON_COMMON = {"iotests.py"}
MAX_DIFF_BYTES = 64 << 20
MAX_SOURCE_BYTES = 64 << 20  # one mapped source file, read for its digest


@dataclass(frozen=True)
class Affected:
    """What the change selects: every run (with why), or the changed functions and tests."""

    everything: str | None  # why every run is affected, or None
    functions: frozenset[int]  # indexes into the map's table
    tests: Mapping[str, str]  # test key -> why
    notes: tuple[str, ...] = ()

    def why(self, run: Run, cmap: CoverageMap, table: Sequence[tuple[str, Span]]) -> str | None:
        """Why this run is affected, or None when it is not."""
        if self.everything:
            return self.everything
        if run.test.key in self.tests:
            return self.tests[run.test.key]
        executed = cmap.runs.get(run.id.history_key)
        if executed is None:
            return "not in the coverage map"
        hit = sorted(self.functions & executed)
        if hit:
            path, span = table[hit[0]]
            more = f" and {len(hit) - 1} more changed function(s)" if len(hit) > 1 else ""
            return f"executes {printable(span.name)} ({printable(path)}){more}"
        return None

    def specificity(self, run: Run, cmap: CoverageMap) -> tuple[int, int]:
        """How closely an affected run aims at the change, lowest first: its own test changed (0); it executes a
        changed function (1), the fewer functions it executes in all the closer; anything else (2): every run,
        a run the map does not hold."""
        if self.everything:
            return 2, 0
        if run.test.key in self.tests:
            return 0, 0
        executed = cmap.runs.get(run.id.history_key)
        return (1, len(executed)) if executed is not None and self.functions & executed else (2, 0)


def _helpers_closure(iotests: Path, changed: set[str]) -> set[str]:
    """Changed helper files of tests/qemu-iotests, and the helpers that name them, transitively."""
    helpers = {p.name: _read(p) for p in iotests.iterdir()
               if p.is_file() and not re.fullmatch(r"\d{3}(\.out.*)?", p.name) and p.name != "group.local"}
    found = set(changed)
    grew = True
    while grew:
        grew = False
        for name, text in helpers.items():
            if name not in found and any(_names(text, h) for h in found):
                found.add(name)
                grew = True
    return found


def _names(text: str, helper: str) -> bool:
    stem = helper.rsplit(".", 1)[0] if helper.endswith(".py") else helper
    return helper in text or bool(re.search(rf"\b(import|from)\s+{re.escape(stem)}\b", text))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


_MACHINERY = {"check", "testenv.py", "testrunner.py", "findtests.py", "linters.py", "meson.build", "group",
              "group.local"}


def _test_of(rel: str, catalog: Catalog) -> str | None:
    """The test key a file of tests/qemu-iotests belongs to (the test or one of its outputs)."""
    name = re.sub(r"\.out(\..*)?$", "", rel)
    return name if name in catalog.tests else None


def affected(changes: Iterable[FileChange], cmap: CoverageMap, catalog: Catalog) -> Affected:
    table = cmap.table()
    index = {(path, span.name): i for i, (path, span) in enumerate(table)}
    functions: set[int] = set()
    tests: dict[str, str] = {}
    helpers: set[str] = set()
    for change in changes:
        path = change.path
        if path.startswith(RUNNER):
            return Affected(f"this runner changed ({printable(path)})", frozenset(), {})
        if path.startswith(IOTESTS):
            rel = path[len(IOTESTS):]
            test = _test_of(rel, catalog) or (_test_of(change.new[len(IOTESTS):], catalog)
                                              if change.new and change.new.startswith(IOTESTS) else None)
            if test is not None:
                tests[test] = f"the test changed ({printable(path)})"
            elif rel in _MACHINERY or "/" in rel:
                return Affected(f"the iotests machinery changed ({printable(path)})", frozenset(), {})
            else:
                helpers.add(rel)
            continue
        if path.startswith("python/"):
            helpers.add("iotests.py")
            continue
        spans = cmap.files.get(path)
        if spans is None:
            return Affected(f"{printable(path)} changed, and it has no functions in the coverage map",
                            frozenset(), {})
        if change.binary:
            return Affected(f"{printable(path)} changed as binary data, which the coverage map cannot place",
                            frozenset(), {})
        whole = change.sections > 1 or change.old is None or change.new is None or change.old != change.new
        for hunk in change.hunks if not whole else []:
            inside = [i for i, s in enumerate(spans) if _touches(hunk, s.start, s.end)]
            if not _covered(hunk, [spans[i] for i in inside]):
                line = hunk.start if hunk.count else f"{hunk.start}-{hunk.start + 1}"
                return Affected(f"{printable(path)}:{line} changed outside any function of the coverage map",
                                frozenset(), {})
            functions.update(index[(path, spans[i].name)] for i in inside)
        if whole:
            functions.update(index[(path, s.name)] for s in spans)
    unknown = functions & cmap.uncounted
    if unknown:
        path, span = table[min(unknown)]
        return Affected(f"{printable(span.name)} ({printable(path)}) changed, and its counters cannot tell which "
                        "runs executed it", frozenset(), {})
    if helpers:
        tests.update(_helper_tests(helpers, catalog))
    return Affected(None, frozenset(functions), tests)


def _touches(hunk: Hunk, start: int, end: int) -> bool:
    if hunk.count == 0:  # inserted after line `start`: inside when both neighbours are the function's
        return start <= hunk.start < end
    return hunk.start <= end and start <= hunk.last


def _covered(hunk: Hunk, spans: Sequence[Span]) -> bool:
    """Whether the spans together hold every line the hunk replaces: compared as ranges, so that a
    header claiming two billion lines costs no more than one claiming two."""
    if hunk.count == 0:
        return bool(spans)
    reached = hunk.start - 1  # the hunk's lines up to here are inside a span
    for span in sorted(spans, key=lambda s: s.start):
        if span.start > reached + 1:
            return False
        reached = max(reached, span.end)
        if reached >= hunk.last:
            return True
    return reached >= hunk.last


def _helper_tests(helpers: set[str], catalog: Catalog) -> dict[str, str]:
    found = _helpers_closure(catalog.iotests, helpers)
    picked: dict[str, str] = {}
    for key, test in catalog.tests.items():
        if (found & BASH_COMMON and not test.python) or (found & PYTHON_COMMON and test.python):
            picked[key] = f"it uses {', '.join(sorted(found & (BASH_COMMON | PYTHON_COMMON)))}, which changed"
            continue
        text = _read(test.path)
        named = sorted(h for h in found if _names(text, h))
        if named:
            picked[key] = f"it uses {named[0]}, which changed"
    return picked


# --- the diff, from git or a file, and whether the map still describes the tree ----------------------------

def _git(source: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = _git_bytes(source, *args)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", errors="replace"),
                                       proc.stderr.decode("utf-8", errors="replace"))


def _git_bytes(source: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=timeout)
    except FileNotFoundError:
        raise UsageError("--affected-by needs git, which is not installed") from None


def diff_against(source: Path, rev: str) -> str:
    """`git diff REV` of the working tree, paths relative to the QEMU source folder."""
    if _git(source, "rev-parse", "--show-toplevel").returncode != 0:
        raise UsageError(f"--affected-by needs a git checkout: {source} is not in one (use --affected-by-diff FILE)")
    if rev.startswith("-") or _git(source, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        raise UsageError(f"--affected-by: unknown revision: {printable(rev)}")
    proc = _git(source, "diff", "--no-color", "--no-ext-diff", "-M", "-U0", "--relative", rev, "--")
    if proc.returncode != 0:
        raise UsageError(f"--affected-by: git diff {printable(rev)} failed: {printable(proc.stderr.strip())[:200]}")
    return proc.stdout


def read_diff(path: Path) -> str:
    """--affected-by-diff FILE's text: a regular file only (a FIFO or /dev/zero is refused unread), capped."""
    return inputs.read_bytes(path, "--affected-by-diff", MAX_DIFF_BYTES).decode("utf-8", errors="replace")


def stale_files(cmap: CoverageMap, source: Path, changes: Sequence[FileChange],
                old_text: Mapping[str, bytes] | None) -> list[str]:
    """Mapped files whose text is not the text the map was made from: the tree's files outside the
    diff as they are now, the diff's files as they were at REV (old_text; unknown for a patch file).
    Each is read in the source folder (the map's names are relative paths without `..`, checked when it loads;
    the tree's own links are followed); one that is not a regular file there (gone, a FIFO, a device) is stale,
    never waited on."""
    changed = {c.path for c in changes} | {c.new for c in changes if c.new}
    stale = []
    for path, digest in sorted(cmap.digests.items()):
        if path in changed:
            if old_text is not None and path in old_text and source_digest(old_text[path]) != digest:
                stale.append(path)
            continue
        try:
            data = inputs.read_in_tree(source, path, "source file", MAX_SOURCE_BYTES)
        except UsageError:
            stale.append(path)
            continue
        if source_digest(data) != digest:
            stale.append(path)
    return stale


def old_texts(source: Path, rev: str, changes: Sequence[FileChange], cmap: CoverageMap) -> dict[str, bytes]:
    texts = {}
    for change in changes:
        if change.old and change.old in cmap.digests:
            proc = _git_bytes(source, "show", f"{rev}:./{change.old}", timeout=60)
            if proc.returncode == 0:
                texts[change.old] = proc.stdout
    return texts


# --- the selection, as planning uses it ---------------------------------------------------------------------

@dataclass(frozen=True)
class ChangeSelection:
    affected: Affected
    cmap: CoverageMap
    source: str  # "git diff REV" or the patch file, for the start line

    @property
    def reason(self) -> str:
        return f"not affected by the change (coverage map of {printable(self.cmap.created[:10])})"

    def split(self, runs: Sequence[Run]) -> tuple[list[Run], list[Result], dict[Run, str]]:
        """The runs the change affects (with why), and the others as not run."""
        table = self.cmap.table()
        kept, dropped, why = [], [], {}
        for run in runs:
            because = self.affected.why(run, self.cmap, table)
            if because is None:
                dropped.append(Result(run, Outcome.NOT_RUN, self.reason))
            else:
                kept.append(run)
                why[run] = f"affected: {because}"
        return kept, dropped, why

    def ranks(self, runs: Sequence[Run]) -> dict[Run, tuple[int, int]]:
        return {r: self.affected.specificity(r, self.cmap) for r in runs}


def _version(tree: str) -> str:
    return tree.split(" tests:", 1)[0]


def select_for_change(source: Path, catalog: Catalog, tree: str, rev: str | None, diff_file: Path | None,
                      map_file: Path, stale_ok: bool, warn: Callable[[str], None]) -> ChangeSelection:
    """--affected-by REV / --affected-by-diff FILE: the map checked against the tree, the diff mapped."""
    cmap = coverage_map.load(map_file)
    if _version(cmap.tree) != _version(tree):
        raise UsageError(f"coverage map {map_file} is of another tree ({printable(cmap.tree)[:100]}; this one is "
                         f"{_version(tree)})")
    if rev is not None:
        text, what = diff_against(source, rev), f"git diff {printable(rev)}"
    else:
        assert diff_file is not None
        text, what = read_diff(diff_file), printable(str(diff_file))
    changes = parse_diff(text, what)
    if not changes and rev is None:  # an HTML page, an empty file: no change to select by, never 0 runs
        raise UsageError(f"--affected-by-diff {what}: no diff in it (no 'diff --git', '---'/'+++' or 'Binary "
                         "files' line)")
    stale = stale_files(cmap, source, changes, old_texts(source, rev, changes, cmap) if rev is not None else None)
    if stale:
        shown = ", ".join(printable(p) for p in stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        line = (f"coverage map {map_file} ({printable(cmap.created)[:40]}) is older than the tree's sources: "
                f"{shown} changed outside the diff")
        if not stale_ok:
            raise UsageError(f"{line}; make a new map (--coverage-map on a gcov build) or give --affected-by-stale-map")
        warn(f"{line}; used anyway (--affected-by-stale-map)")
    return ChangeSelection(affected(changes, cmap, catalog), cmap, what)


@dataclass(frozen=True)
class ChangeOptions:
    """What the command line asked of --affected-by (exactly one of rev and diff_file is given)."""

    rev: str | None
    diff_file: Path | None
    map_file: Path
    stale_ok: bool = False
    fallback: bool = False


@dataclass(frozen=True)
class Chosen:
    """The runs a change keeps (each with why), the others as not run, and the line saying how many."""

    kept: list[Run]
    unaffected: list[Result]
    why: dict[Run, str]
    line: str
    rank: dict[Run, tuple[int, int]] = field(default_factory=dict)  # how specific to the change (lowest first)


def choose_runs(to_run: list[Run], source: Path, catalog: Catalog, tree: str, options: ChangeOptions,
                warn: Callable[[str], None]) -> Chosen:
    """Planning's step for --affected-by / --affected-by-diff. With --affected-by-fallback, whatever
    keeps the change from selecting (a UsageError) is one warning line and every run."""
    try:
        selection = select_for_change(source, catalog, tree, options.rev, options.diff_file, options.map_file,
                                      options.stale_ok, warn)
    except UsageError as exc:
        if not options.fallback:
            raise
        warn(f"every run (--affected-by-fallback): {exc}")
        return Chosen(to_run, [], {}, f"{len(to_run)} of {len(to_run)} runs: every run, the change could not "
                                      f"select ({exc})")
    kept, unaffected, reasons = selection.split(to_run)
    line = f"{len(kept)} of {len(to_run)} runs affected by {selection.source}"
    if selection.affected.everything:
        line += f" (all: {selection.affected.everything})"
    return Chosen(kept, unaffected, reasons, line, selection.ranks(kept))
