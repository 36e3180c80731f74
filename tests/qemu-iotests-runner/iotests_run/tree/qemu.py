"""Where the QEMU source tree and build are, and what that QEMU version knows.

Order of precedence: --qemu-source/--qemu-build, then QEMU_SOURCE/QEMU_BUILD in
the environment, then the current folder being inside a QEMU build (as check is
run from build/tests/qemu-iotests), then the cached reference tree built by
tools/build-reference-qemu.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from iotests_run.errors import SetupError
from iotests_run.tree.sanitizers import sanitizers_of

# What check of QEMU 7.2 knows; a tree's own check overrides these (see _lists_from_check).
DEFAULT_FORMATS = ("raw", "bochs", "cloop", "parallels", "qcow", "qcow2", "qed", "vdi",
                   "vpc", "vhdx", "vmdk", "luks", "dmg")
DEFAULT_PROTOCOLS = ("file", "rbd", "nbd", "ssh", "nfs", "fuse")

HOW_TO_GET_ONE = ("no QEMU tree found: pass --qemu-source/--qemu-build, set QEMU_SOURCE/QEMU_BUILD, "
                  "run from inside a QEMU build, or build the reference tree with "
                  "tools/build-reference-qemu")


@dataclass(frozen=True)
class Binaries:
    qemu: Path
    qemu_img: Path
    qemu_io: Path
    qemu_nbd: Path
    qsd: Path


@dataclass(frozen=True)
class QemuTree:
    source: Path
    build: Path
    version: str
    binaries: Binaries
    formats: tuple[str, ...]
    protocols: tuple[str, ...]
    default_machine: str
    # Variables this version's check sets in its own environment (QEMU 10.x: PYTHONWARNINGS=default).
    check_sets: tuple[tuple[str, str], ...] = ()
    # A sanitizer build's sanitizers ("address", "undefined"), read from qemu-img and qemu-system: runs get
    # ASAN_OPTIONS/UBSAN_OPTIONS (tree/sanitizers.py).
    sanitizers: tuple[str, ...] = ()

    @property
    def iotests(self) -> Path:
        return self.source / "tests" / "qemu-iotests"

    @property
    def python_dir(self) -> Path:
        return self.source / "python"


def reference_cache() -> Path:
    base = os.environ.get("IOTESTS_RUN_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if not xdg:
        try:
            xdg = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):  # HOME unset and no passwd entry for this uid (a bare CI container)
            raise SetupError(f"no home folder for the cache (HOME is unset and uid {os.getuid()} has no passwd "
                             "entry): set HOME, XDG_CACHE_HOME or IOTESTS_RUN_CACHE, or name the files (--history, "
                             "--coverage-map, --qemu-source/--qemu-build)") from None
    return Path(xdg) / "iotests-run"


def _cached_reference() -> tuple[Path, Path] | None:
    cache = reference_cache()
    # The oldest supported generation first: it is the default reference tree.
    for top in sorted(cache.glob("qemu-*"), key=lambda p: _version_key(p.name[5:])):
        if (top / "complete").is_file():
            return top / "src", top / "build"
    return None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


def _source_of_build(build: Path) -> Path | None:
    info = build / "meson-info" / "meson-info.json"
    try:
        return Path(json.loads(info.read_text())["directories"]["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _enclosing_build(cwd: Path) -> Path | None:
    for folder in (cwd, *cwd.parents):
        if (folder / "meson-info" / "meson-info.json").is_file() and (folder / "qemu-img").exists():
            return folder
    return None


def locate(source: str | None, build: str | None, environ: Mapping[str, str], cwd: Path) -> tuple[Path, Path]:
    """Pick the (source, build) pair by the documented order of precedence."""
    source = source or environ.get("QEMU_SOURCE") or None
    build = build or environ.get("QEMU_BUILD") or None
    if source is None and build is None:
        found = _enclosing_build(cwd)
        if found is not None:
            build = str(found)
    if source is None and build is None:
        cached = _cached_reference()
        if cached is None:
            raise SetupError(HOW_TO_GET_ONE)
        return cached
    if build is None:
        assert source is not None
        candidate = Path(source) / "build"
        if not candidate.is_dir():
            raise SetupError(f"no build folder for QEMU source {source}: pass --qemu-build")
        build = str(candidate)
    if source is None:
        derived = _source_of_build(Path(build))
        if derived is None:
            raise SetupError(f"not a QEMU build folder (no meson-info/meson-info.json): {build}")
        source = str(derived)
    return Path(source).resolve(), Path(build).resolve()


def _check_source(source: Path) -> str:
    if not source.is_dir():
        raise SetupError(f"QEMU source folder does not exist: {source}")
    if not (source / "tests" / "qemu-iotests" / "common.rc").is_file() or not (source / "VERSION").is_file():
        raise SetupError(f"not a QEMU source tree (no VERSION or tests/qemu-iotests/common.rc): {source}")
    return (source / "VERSION").read_text().strip()


def _executable(path: Path) -> Path:
    if not path.exists():
        raise SetupError(f"QEMU build lacks {path}")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SetupError(f"not executable: {path}")
    return path


def _dotdot_build_root(source_iotests: Path) -> bool:
    """Whether this version's check names binaries relative to build/tests/qemu-iotests/../..

    QEMU 7.2's testenv.py joins '..', '..' onto the build's iotests folder; later
    versions take its parent.parent. Iotests see those strings, so use the same.
    """
    try:
        return "'..', '..'" in (source_iotests / "testenv.py").read_text(encoding="utf-8")
    except OSError:
        return False


def find_binaries(build: Path, environ: Mapping[str, str], dotdot: bool = False) -> Binaries:
    """check's rules: *_PROG variables first, else the build root."""
    if not build.is_dir():
        raise SetupError(f"QEMU build folder does not exist: {build}")
    iotests = build / "tests" / "qemu-iotests"
    root = Path(os.path.join(iotests, "..", "..")) if dotdot and iotests.is_dir() else build
    arch = platform.machine()
    if "ppc64" in arch:
        arch = "ppc64"
    qemu = Path(environ.get("QEMU_PROG") or root / f"qemu-system-{arch}")
    if not qemu.exists():
        systems = [p for p in sorted(root.glob("qemu-system-*")) if p.is_file() and os.access(p, os.X_OK)]
        if not systems:
            raise SetupError(f"QEMU build lacks a qemu-system-* binary: {build}")
        qemu = systems[0]

    def pick(var: str, *default: str) -> Path:
        return _executable(Path(environ.get(var) or root.joinpath(*default)))

    return Binaries(
        qemu=_executable(qemu),
        qemu_img=pick("QEMU_IMG_PROG", "qemu-img"),
        qemu_io=pick("QEMU_IO_PROG", "qemu-io"),
        qemu_nbd=pick("QEMU_NBD_PROG", "qemu-nbd"),
        qsd=pick("QSD_PROG", "storage-daemon", "qemu-storage-daemon"),
    )


def _read_check(iotests: Path) -> str:
    try:
        return (iotests / "check").read_text(encoding="utf-8")
    except OSError:
        return ""


def _lists_from_check(check: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The formats and protocols this version's check accepts, from its source text."""

    def listed(var: str, default: tuple[str, ...]) -> tuple[str, ...]:
        m = re.search(var + r"\s*=\s*\[([^\]]*)\]", check)
        names = tuple(re.findall(r"'([\w-]+)'", m.group(1))) if m else ()
        return names or default

    return listed("format_list", DEFAULT_FORMATS), listed("protocol_list", DEFAULT_PROTOCOLS)


def _variables_check_sets(check: str) -> tuple[tuple[str, str], ...]:
    """`os.environ["NAME"] = "VALUE"` lines of the tree's check: the tests inherit them."""
    return tuple(re.findall(r"""os\.environ\[["'](\w+)["']\]\s*=\s*["']([^"']*)["']""", check))


def default_machine(qemu: Path) -> str:
    """The machine `-machine help` marks default, by its short alias when it has one."""
    try:
        out = subprocess.run([str(qemu), "-machine", "help"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SetupError(f"cannot run {qemu} -machine help: {exc}") from exc
    lines = out.split("\n")
    default = next((m.split(" ", 1)[0] for m in lines if m.endswith(" (default)")), "")
    if not default:
        return ""
    alias = next((m for m in lines if m.endswith(f" (alias of {default})")), None)
    return alias.split(" ", 1)[0] if alias else default


def open_tree(source: str | None, build: str | None, environ: Mapping[str, str], cwd: Path) -> QemuTree:
    src, bld = locate(source, build, environ, cwd)
    version = _check_source(src)
    iotests = src / "tests" / "qemu-iotests"
    binaries = find_binaries(bld, environ, dotdot=_dotdot_build_root(iotests))
    check = _read_check(iotests)  # read once: the lists and the variables both come from it
    formats, protocols = _lists_from_check(check)
    return QemuTree(source=src, build=bld, version=version, binaries=binaries, formats=formats,
                    protocols=protocols, default_machine=default_machine(binaries.qemu),
                    check_sets=_variables_check_sets(check),
                    sanitizers=tuple(sorted({*sanitizers_of(binaries.qemu_img), *sanitizers_of(binaries.qemu)})))
