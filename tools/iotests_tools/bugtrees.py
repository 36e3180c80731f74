"""Injected bugs (tools/bugs.d/) and the one QEMU tree per version that carries all of them.

Each bug is a folder tools/bugs.d/<name>/ with bug.json (version, test, format, kind, expect, env,
note) and <version>.patch (`patch -p1` against that version's reference sources). Every patch is
dormant unless its environment variable (bug.json's "env") is set, so one tree per version, with
every patch applied, serves every bug: built once and reused while the patches stay the same.

The tree lives in <cache>/bugs-<version>[-<variant>]/ (cache: IOTESTS_RUN_BUGS_CACHE, else the
reference trees' cache): src/ is a git copy of the reference sources (so that a new patch set is
applied to pristine files and only what changed is rebuilt), build/ is configured exactly as the
reference build was (its config.status) and builds only what the iotests run (TARGETS). The stamp
file names the hash of the patches and configure line it was built for. Builds are serialised by a
lock file, so that concurrent test sessions do not build into each other.

Used by tools/bugs and by the tests (tests/qemu-iotests-runner/tests/support.py: bug_tree).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from iotests_run.errors import UsageError
from iotests_run.inputs import parse_json, read_bytes
from iotests_tools import REPO

BUGS_D = REPO / "tools" / "bugs.d"
# What the iotests run (as tools/mutants): a full `ninja` would also link every unit test.
TARGETS = ["qemu-img", "qemu-io", "qemu-nbd", "storage-daemon/qemu-storage-daemon", "qemu-system-x86_64"]
VERSIONS = ("7.2", "10.0")
KINDS = ("hang", "crash", "sanitizer")
RECIPE = "bug tree 1"  # bump when how a tree is made changes
MAX_BUG_JSON = 64 << 10
MAX_PATCH = 1 << 20
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
ENV_NAME = re.compile(r"^IOTESTS_BUG_[A-Z0-9_]{1,64}$")


@dataclass(frozen=True)
class Bug:
    name: str
    version: str
    test: str
    format: str
    kind: str
    expect: str  # a regular expression the explanation's first line must match (search)
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def patch(self) -> Path:
        return BUGS_D / self.name / f"{self.version}.patch"


def _bug(folder: Path) -> Bug:
    """One bug.json, checked field by field (a mistake is a one-line UsageError naming it)."""
    path = folder / "bug.json"
    data = parse_json(read_bytes(path, "bug", MAX_BUG_JSON), "bug", path)
    where = f"bug {folder.name}"
    if not isinstance(data, dict):
        raise UsageError(f"{where}: bug.json is not an object")
    text = {k: data.get(k) for k in ("version", "test", "format", "kind", "expect", "note")}
    for key in ("version", "test", "kind", "expect"):
        if not isinstance(text[key], str) or not text[key]:
            raise UsageError(f"{where}: bug.json needs a string {key!r}")
    if text["version"] not in VERSIONS or text["kind"] not in KINDS:
        raise UsageError(f"{where}: version must be one of {VERSIONS}, kind one of {KINDS}")
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) and ENV_NAME.match(k) for k, v in env.items()):
        raise UsageError(f"{where}: env must map IOTESTS_BUG_* names to strings")
    try:
        re.compile(str(text["expect"]))
    except re.error as exc:
        raise UsageError(f"{where}: expect is not a regular expression ({exc})") from None
    bug = Bug(folder.name, str(text["version"]), str(text["test"]), str(text["format"] or "qcow2"),
              str(text["kind"]), str(text["expect"]), dict(env), str(text["note"] or ""))
    if not bug.patch.is_file():
        raise UsageError(f"{where}: no {bug.patch.name} beside bug.json")
    return bug


def bugs(version: str | None = None) -> list[Bug]:
    """Every injected bug (of one version), by name."""
    found = []
    for folder in sorted(BUGS_D.iterdir()) if BUGS_D.is_dir() else []:
        if folder.is_dir() and NAME.match(folder.name):
            bug = _bug(folder)
            if version is None or bug.version == version:
                found.append(bug)
    return found


def patches(version: str) -> list[Path]:
    """Every patch for this version, in the order they are applied (by bug name)."""
    return sorted(BUGS_D.glob(f"*/{version}.patch"))


def cache_dir() -> Path:
    explicit = os.environ.get("IOTESTS_RUN_BUGS_CACHE") or os.environ.get("IOTESTS_RUN_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iotests-run"


def say(text: str) -> None:
    print(f"bugs: {text}", file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    """A build step; its output is shown only when it fails (the last part of it)."""
    done = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")


def reference(version: str, *extra: str) -> tuple[Path, Path]:
    """The reference tree of this version (built by tools/build-reference-qemu when it is not yet)."""
    cmd = [str(REPO / "tools" / "build-reference-qemu"), "--version", version, *extra]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tools/build-reference-qemu failed:\n{done.stderr[-3000:]}")
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return Path(values["QEMU_SOURCE"]), Path(values["QEMU_BUILD"])


def configure_line(build: Path) -> list[str]:
    """The configure options a build was made with (after `exec CONFIGURE`, before "$@")."""
    status = (build / "config.status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("exec "))
    return shlex.split(line)[2:-1]


def digest(version: str, options: list[str]) -> str:
    """What a bug tree is built from: the patches (names and bytes), the configure line, the recipe."""
    h = hashlib.sha256(RECIPE.encode())
    for patch in patches(version):
        h.update(f"\0{patch.parent.name}\0".encode())
        h.update(read_bytes(patch, "patch", MAX_PATCH))
    h.update("\0".join(options).encode())
    return h.hexdigest()[:16]


@contextmanager
def _locked(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
    """The tree's lock: exclusive while it is (re)built, shared while a test runs on it, so that another
    session's patch set is never built into a tree under a running test."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _lock_path(version: str, variant: str = "") -> Path:
    return cache_dir() / f".bugs-{version}{'-' + variant if variant else ''}.lock"


def _top(version: str, variant: str = "") -> Path:
    return cache_dir() / (f"bugs-{version}-{variant}" if variant else f"bugs-{version}")


@contextmanager
def tree_in_use(version: str, variant: str = "", reference_build: Path | None = None) -> Iterator[tuple[Path, Path]]:
    """The bug tree, built for this checkout's patches and held (shared lock) until the block ends."""
    for _ in range(5):
        src, build = bug_tree(version, variant, reference_build)
        options = configure_line(reference_build or reference(version)[1])
        with _locked(_lock_path(version, variant), fcntl.LOCK_SH):
            stamp = _top(version, variant) / "complete"
            if stamp.is_file() and stamp.read_text().strip() == digest(version, options):
                yield src, build
                return
        say(f"the {version} bug tree was rebuilt for other patches meanwhile; building it again")
    raise RuntimeError(f"the {version} bug tree keeps being rebuilt for other patches (another session?)")


def _copy_sources(ref_src: Path, src: Path) -> None:
    """A git copy of the reference sources: `git checkout` brings back pristine files for a new patch set."""
    shutil.rmtree(src, ignore_errors=True)
    say(f"copying {ref_src} to {src}")
    shutil.copytree(ref_src, src, symlinks=True)
    git = ["git", "-C", str(src), "-c", "user.name=bugs", "-c", "user.email=bugs@invalid"]
    _run([*git, "init", "-q"])
    _run([*git, "add", "-A", "-f"])
    _run([*git, "commit", "-qm", "reference sources"])


def _link_firmware(ref_build: Path, build: Path) -> None:
    """The reference build's firmware links (Debian's seabios, ipxe...), which qemu-system needs."""
    for fw in (ref_build / "qemu-bundle").rglob("*"):
        target = build / fw.relative_to(ref_build)
        if fw.is_symlink() and not os.path.lexists(target):  # (a dangling link of ninja's is there already)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.readlink(fw))


def bug_tree(version: str, variant: str = "", reference_build: Path | None = None) -> tuple[Path, Path]:
    """(source, build) of the bug tree of this version, built when its patches or configure line changed.

    variant/reference_build: another flavour of the tree (e.g. a sanitizer build): its own folder
    bugs-<version>-<variant>, configured as reference_build was."""
    if version not in VERSIONS:
        raise UsageError(f"bug tree: unknown version {version} (known: {', '.join(VERSIONS)})")
    ref_src, ref_build = reference(version)
    options = configure_line(reference_build or ref_build)
    top = _top(version, variant)
    src, build, stamp = top / "src", top / "build", top / "complete"
    wanted = digest(version, options)
    with _locked(_lock_path(version, variant)):
        if stamp.is_file() and stamp.read_text().strip() == wanted and (build / "qemu-img").is_file():
            return src, build
        stamp.unlink(missing_ok=True)
        copied = subprocess.run(["git", "-C", str(src), "rev-parse", "-q", "--verify", "HEAD"], capture_output=True,
                                stdin=subprocess.DEVNULL).returncode == 0 if (src / ".git").is_dir() else False
        if not copied:  # (never made, or a copy that was cut short)
            _copy_sources(ref_src, src)
        _run(["git", "-C", str(src), "checkout", "-q", "--", "."])
        _run(["git", "-C", str(src), "clean", "-qfdx"])
        for patch in patches(version):
            say(f"applying {patch.parent.name}/{patch.name}")
            _run(["patch", "-p1", "--forward", "--quiet", "-i", str(patch)], cwd=src)
        if not (build / "build.ninja").is_file() or configure_line(build) != options:
            shutil.rmtree(build, ignore_errors=True)
            build.mkdir(parents=True)
            say(f"configuring {build}")
            env_path = [str(Path(options[0].split("=", 1)[1]).parent)] if options[0].startswith("--python=") else []
            _configure(src, build, options, env_path)
        say(f"building {build} ({' '.join(TARGETS)}; minutes the first time)")
        _run(["ninja", "-C", str(build), *TARGETS])
        _link_firmware(ref_build, build)
        stamp.write_text(wanted + "\n")
    return src, build


def _configure(src: Path, build: Path, options: list[str], extra_path: list[str]) -> None:
    """configure as the reference build was (10.0's is configured with the reference venv's meson on PATH)."""
    env = dict(os.environ, PATH=os.pathsep.join([*extra_path, os.environ.get("PATH", "")]))
    cmd = [str(src / "configure"), *options]
    done = subprocess.run(cmd, cwd=build, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"configure failed:\n{(done.stdout + done.stderr)[-3000:]}")


@dataclass(frozen=True)
class Outcome:
    """What one bug's run gave: the run's outcome, its explanation, whether the explanation names the cause."""

    bug: Bug
    outcome: str
    explanation: str
    reason: str
    results: Path

    @property
    def first_line(self) -> str:
        return self.explanation.splitlines()[0] if self.explanation.strip() else ""

    @property
    def named(self) -> bool:
        return bool(self.first_line) and re.search(self.bug.expect, self.first_line) is not None


def variant_of(bug: Bug) -> tuple[str, Path | None]:
    """Which flavour of the bug tree a bug runs on: a sanitizer bug on the one configured as the version's sanitizer
    reference build (tools/build-reference-qemu --sanitize: ASan + UBSan), bugs-<version>-sanitize."""
    if bug.kind == "sanitizer":
        return "sanitize", reference(bug.version, "--sanitize")[1]
    return "", None


def run_bug(bug: Bug, results: Path, *, hang_timeout: float = 8, timeout: float = 180,
            extra: tuple[str, ...] = ()) -> Outcome:
    """The bug's test run by iotests-run on its bug tree, the bug's variable set and passed on to the test."""
    with tree_in_use(bug.version, *variant_of(bug)) as (src, build):
        return _run_bug(bug, results, src, build, hang_timeout, timeout, extra)


def _run_bug(bug: Bug, results: Path, src: Path, build: Path, hang_timeout: float, timeout: float,
             extra: tuple[str, ...]) -> Outcome:
    shutil.rmtree(results, ignore_errors=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **bug.env, PYTHONPATH=str(REPO / "tests" / "qemu-iotests-runner"))
    passed = [a for name in bug.env for a in ("--pass-env", name)]
    history = results.parent / f"{bug.name}.history.json"
    cmd = [sys.executable, "-m", "iotests_run", "-f", bug.format, bug.test, "--qemu-source", str(src),
           "--qemu-build", str(build), "--results", str(results), "--history", str(history),
           "--retry", "0", "--hang-timeout", f"{hang_timeout:g}", "--timeout", f"{timeout:g}", "-q", *passed, *extra]
    done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    document = results / "results.json"
    if not document.is_file():
        return Outcome(bug, "error", "", f"iotests-run exited {done.returncode}: {done.stderr.strip()[-300:]}", results)
    data = parse_json(read_bytes(document, "results", 64 << 20), "results", document)
    runs = [r for r in data.get("runs", []) if r.get("test") == bug.test]
    if not runs:
        return Outcome(bug, "error", "", f"no run of {bug.test} in {document}", results)
    run = runs[0]
    return Outcome(bug, str(run.get("outcome")), str(run.get("explanation") or ""), str(run.get("reason") or ""),
                   results)
