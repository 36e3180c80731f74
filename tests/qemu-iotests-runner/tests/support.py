"""Helpers shared by the tests: fake QEMU trees and running the real command."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MACHINE_HELP = """Supported machines are:
microvm              microvm (i386)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)
"""


@dataclass
class FakeTree:
    """A QEMU-shaped tree whose iotests are tiny scripts written by the test."""

    source: Path
    build: Path

    @property
    def iotests(self) -> Path:
        return self.source / "tests" / "qemu-iotests"

    def add_test(self, name: str, body: str, out: str | None = "", groups: str = "quick",
                 python: bool = False) -> Path:
        path = self.iotests / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shebang = "#!/usr/bin/env python3" if python else "#!/usr/bin/env bash"
        path.write_text(f"{shebang}\n# group: {groups}\n" + textwrap.dedent(body))
        path.chmod(0o755)
        if out is not None:
            Path(f"{path}.out").write_text(out)
        return path

    def args(self, results: Path) -> list[str]:
        return ["--qemu-source", str(self.source), "--qemu-build", str(self.build), "--results", str(results)]


def _script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def run_cli(args: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600, as_nobody: bool = False) -> Completed:
    """The real command, in a child process, as a user would run it (as_nobody: as an unprivileged user)."""
    python = sys.executable
    if as_nobody and os.geteuid() == 0:
        python, env = _unprivileged_python(env)
    proc = subprocess.run([python, "-m", "iotests_run", *args, *_history_of_the_suite(args)], cwd=cwd, env=env,
                          user=NOBODY if as_nobody and os.geteuid() == 0 else None,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    return Completed(proc.returncode, proc.stdout, proc.stderr)


NOBODY = 65534
_SUITE_HISTORY: list[Path] = []


def _history_of_the_suite(args: Sequence[str]) -> list[str]:
    """Runs of the test suite keep their duration and outcome history to themselves: in the user's
    ~/.cache file, the suite's many fake trees would push out the reference trees' histories."""
    if args[:1] in (["merge"], ["block-state"]) or any(a == "--history" or a.startswith("--history=") for a in args):
        return []
    if not _SUITE_HISTORY:
        import tempfile

        _SUITE_HISTORY.append(Path(tempfile.mkdtemp(prefix="iotr-suite-history-")) / "durations.json")
    return ["--history", str(_SUITE_HISTORY[0])]


def _unprivileged_python(env: dict[str, str] | None) -> tuple[str, dict[str, str]]:
    """An interpreter of this Python version that an unprivileged user may run, finding the installed runner.

    A pyenv interpreter under /root is out of reach for other users; the system's one of the
    same version loads the runner and its dependencies from this environment's site-packages.
    """
    import pytest

    import iotests_run

    site = str(Path(iotests_run.__file__).resolve().parents[1])
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = site
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        try:
            probe = subprocess.run([python, "-c", "import iotests_run, psutil"], user=NOBODY, env=env, cwd="/",
                                   capture_output=True, stdin=subprocess.DEVNULL)
        except OSError:
            continue
        if probe.returncode == 0:
            return python, env
    pytest.skip(f"no {version} that an unprivileged user can run with the runner installed")


@dataclass
class ReferenceTree:
    source: Path
    build: Path

    def args(self, results: Path) -> list[str]:
        return ["--qemu-source", str(self.source), "--qemu-build", str(self.build), "--results", str(results)]




REPO = Path(__file__).resolve().parents[3]


def bug_tree(version: str) -> ReferenceTree:
    """The bug tree of a QEMU version (tools/bugtrees.py: the reference sources with every injected bug's
    dormant patch, built once per set of patches)."""
    if str(REPO / "tools") not in sys.path:
        sys.path.insert(0, str(REPO / "tools"))
    import bugtrees

    source, build = bugtrees.bug_tree(version)
    return ReferenceTree(source, build)


def make_fake_tree(top: Path) -> FakeTree:
    src, build = top / "src", top / "build"
    iotests = src / "tests" / "qemu-iotests"
    iotests.mkdir(parents=True)
    (src / "python").mkdir()
    (src / "VERSION").write_text("7.2.0\n")
    (iotests / "common.rc").write_text("# fake\n")
    for name in ("qemu-img", "qemu-io", "qemu-nbd", "storage-daemon/qemu-storage-daemon"):
        _script(build / name, "#!/bin/sh\nexit 0\n")
    _script(build / "qemu-system-x86_64", f"#!/bin/sh\ncat <<'EOF'\n{MACHINE_HELP}EOF\n")
    return FakeTree(src, build)
