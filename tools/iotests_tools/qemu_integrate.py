"""Hook iotests-run into a QEMU source tree, so that QEMU's own `make check-block` runs it.

    tools/qemu-integrate QEMU_SOURCE_DIR [--build DIR]     hook in (again: refreshes the copy)
    tools/qemu-integrate QEMU_SOURCE_DIR --remove          undo

Hooking in copies this project's tests/qemu-iotests-runner/ (the package and its meson.build)
to the same path in the QEMU tree, and points tests/meson.build at it instead of at
qemu-iotests/, whose test() entries it replaces (same suites: block, block-slow,
block-thorough). The Python packages the runner needs are installed, for the Python
that QEMU's build uses (PYTHON in the build folder's config-host.mak), into the copied
folder's _deps/: nothing outside the QEMU tree changes. The next `make check-block` in
the build folder reconfigures and runs iotests-run; make's -jN is its job count; results go
to BUILD/tests/qemu-iotests-runner/ (results-qcow2/, iotests-qcow2.junit.xml, ...).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from iotests_tools import RUNNER, summary

FOLDER = Path("tests") / "qemu-iotests-runner"
MARKER = ".iotests-run-integrated"
DEPS = "_deps"
PACKAGES = ["junit-xml", "tabulate", "psutil", "py-spy"]
UPSTREAM_LINE = "subdir('qemu-iotests')"
OUR_LINE = "subdir('qemu-iotests-runner')  # iotests-run (tools/qemu-integrate --remove restores qemu-iotests)"


class Refused(Exception):
    """A one-line reason to stop with exit status 2."""


def _say(text: str) -> None:
    print(f"qemu-integrate: {text}", flush=True)


def _tests_meson(source: Path) -> Path:
    path = source / "tests" / "meson.build"
    if not (source / "tests" / "qemu-iotests" / "check").is_file() or not path.is_file():
        raise Refused(f"not a QEMU source tree: {source}")
    return path


def _build_python(source: Path, build: Path | None) -> list[str]:
    """The Python that QEMU's meson runs tests with: PYTHON in config-host.mak, else python3."""
    config = (build or source / "build") / "config-host.mak"
    if not config.is_file():
        if build is not None:
            raise Refused(f"not a configured QEMU build folder (no config-host.mak): {build}")
        return ["python3"]
    for line in config.read_text().splitlines():
        if line.startswith("PYTHON="):
            return shlex.split(line.split("=", 1)[1])[:1]
    return ["python3"]


def _install_dependencies(python: list[str], deps: Path) -> None:
    probe = f"import sys; sys.path.insert(0, {str(deps)!r}); import junit_xml, tabulate, psutil"
    if subprocess.run([*python, "-c", probe], capture_output=True).returncode == 0:
        return
    _say(f"installing {', '.join(PACKAGES)} for {python[0]} into {deps}")
    proc = subprocess.run([*python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
                           str(deps), *PACKAGES], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise Refused(f"cannot install {' '.join(PACKAGES)} for {python[0]}: {last}")


def integrate(source: Path, build: Path | None) -> None:
    meson = _tests_meson(source)
    target = source / FOLDER
    if target.exists() and not (target / MARKER).is_file():
        raise Refused(f"{target} exists and was not made by qemu-integrate")
    python = _build_python(source, build)
    text = meson.read_text()
    lines = text.splitlines(keepends=True)
    if not any(line.startswith(OUR_LINE) for line in lines):
        if not any(line.rstrip("\n") == UPSTREAM_LINE for line in lines):
            raise Refused(f"{meson} has no line {UPSTREAM_LINE} to replace")
    # copy (keeping an earlier _deps), then point tests/meson.build at it
    target.mkdir(exist_ok=True)
    shutil.rmtree(target / "iotests_run", ignore_errors=True)
    shutil.copytree(RUNNER / "iotests_run", target / "iotests_run",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(RUNNER / "meson.build", target / "meson.build")
    (target / MARKER).write_text(f"copied from {RUNNER} by tools/qemu-integrate; --remove deletes this folder\n")
    _install_dependencies(python, target / DEPS)
    new = "".join(OUR_LINE + "\n" if line.rstrip("\n") == UPSTREAM_LINE else line for line in lines)
    if new != text:
        meson.write_text(new)
        _say(f"{meson.relative_to(source)}: {UPSTREAM_LINE} -> subdir('qemu-iotests-runner')")
    _say(f"iotests-run is in {target}; `make check-block` in the build folder now runs it "
         "(results in BUILD/tests/qemu-iotests-runner/)")


def remove(source: Path) -> None:
    meson = _tests_meson(source)
    target = source / FOLDER
    text = meson.read_text()
    lines = text.splitlines(keepends=True)
    new = "".join(UPSTREAM_LINE + "\n" if line.startswith(OUR_LINE) else line for line in lines)
    if new != text:
        meson.write_text(new)
        _say(f"{meson.relative_to(source)}: {UPSTREAM_LINE} restored")
    if target.exists():
        if not (target / MARKER).is_file():
            raise Refused(f"{target} was not made by qemu-integrate; left alone")
        shutil.rmtree(target)
        _say(f"removed {target}")
    if new == text and not target.exists():
        _say("nothing to remove")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Refused(message)


def main() -> int:
    parser = _Parser(prog="qemu-integrate", description=summary(__doc__))
    parser.add_argument("source", type=Path, metavar="QEMU_SOURCE_DIR")
    parser.add_argument("--build", type=Path, metavar="DIR",
                        help="QEMU build folder whose Python gets our dependencies (default: SOURCE/build if any)")
    parser.add_argument("--remove", action="store_true", help="undo the integration")
    try:
        args = parser.parse_args()
        if args.remove:
            remove(args.source.resolve())
        else:
            integrate(args.source.resolve(), args.build.resolve() if args.build else None)
    except Refused as exc:
        print(f"qemu-integrate: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
