"""The environment QEMU's check gives a test, for one format and protocol.

These are facts of check's testenv.py (QEMU 7.2 and later): the variable
names, their defaults and the per-format rules for luks and vmdk. The whole
environment of a run is the user's environment plus these variables, as with
check; only these variables are ever recorded or printed.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from iotests_run import DEPS
from iotests_run.tree.qemu import QemuTree

# Formats that are not "generic" (IMGFMT_GENERIC=false).
NON_GENERIC_FORMATS = frozenset({"bochs", "cloop", "dmg"})

# The order check prints them in; also the set of names reports may show.
IOTESTS_VARIABLES = (
    "PYTHONPATH", "TEST_DIR", "SOCK_DIR", "SAMPLE_IMG_DIR", "PYTHON", "QEMU_PROG",
    "QEMU_IMG_PROG", "QEMU_IO_PROG", "QEMU_NBD_PROG", "QSD_PROG", "QEMU_OPTIONS",
    "QEMU_IMG_OPTIONS", "QEMU_IO_OPTIONS", "QEMU_IO_OPTIONS_NO_FMT", "QEMU_NBD_OPTIONS",
    "IMGOPTS", "IMGFMT", "IMGPROTO", "AIOMODE", "CACHEMODE", "VALGRIND_QEMU",
    "CACHEMODE_IS_DEFAULT", "IMGFMT_GENERIC", "IMGOPTSSYNTAX", "IMGKEYSECRET",
    "QEMU_DEFAULT_MACHINE", "MALLOC_PERTURB_", "GDB_OPTIONS", "PRINT_QEMU",
)

# Where check's -gdb has gdbserver listen when GDB_OPTIONS is unset or empty.
DEFAULT_GDB_OPTIONS = "localhost:12345"

# qemu-system targets whose default machine cannot run the iotests.
MACHINE_FOR_TARGET = {
    "arm": "virt", "aarch64": "virt", "avr": "mega2560", "m68k": "virt", "riscv32": "virt",
    "riscv64": "virt", "rx": "gdbsim-r5f562n8", "tricore": "tricore_testboard",
}


@dataclass(frozen=True)
class Settings:
    """What check's own options choose (-c/-nocache, -i, -o, -misalign, -d, -p, -valgrind, -gdb); its defaults
    when not given."""

    aiomode: str = "threads"
    cachemode: str | None = None  # None: check's default, writeback (and CACHEMODE_IS_DEFAULT=true)
    imgopts: str | None = None
    misalign: bool = False  # qemu-io's --misalign in QEMU_IO_OPTIONS (and _NO_FMT)
    debug: bool = False  # check's -d: each test's argv ends with -d (not a variable)
    print_qemu: bool = False  # check's -p: PRINT_QEMU=y, QEMU's own output in the test's output
    valgrind: bool = False  # check's -valgrind: VALGRIND_QEMU=y, the tests start QEMU under valgrind
    gdb: bool = False  # check's -gdb: GDB_OPTIONS (the user's, else DEFAULT_GDB_OPTIONS), QEMU under gdbserver

    @property
    def cache(self) -> str:
        """The cache mode the tests run with."""
        return self.cachemode or "writeback"


def _add_option(opts: str | None, key: str, value: str) -> str:
    if not opts:
        return f"{key}={value}"
    if f"{key}=" in opts:
        return opts
    return f"{opts},{key}={value}"


def iotests_environment(tree: QemuTree, fmt: str, proto: str, *, python: str,
                        test_dir: Path, sock_dir: Path, malloc_perturb: str,
                        user_env: Mapping[str, str], settings: Settings | None = None) -> dict[str, str]:
    """The iotests variables (only those) check would set for this run."""
    settings = settings or Settings()
    b = tree.binaries
    imgopts = settings.imgopts
    io_options = f"--cache {settings.cache} --aio {settings.aiomode}"
    if settings.misalign:  # as check: after --aio, before -f, in both QEMU_IO_OPTIONS and _NO_FMT
        io_options += " --misalign"
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, (str(tree.iotests), str(tree.python_dir.resolve()),
                                                     user_env.get("PYTHONPATH")))),
        "TEST_DIR": str(test_dir),
        "SOCK_DIR": str(sock_dir),
        "SAMPLE_IMG_DIR": user_env.get("SAMPLE_IMG_DIR", str(tree.iotests / "sample_images")),
        "PYTHON": python,
        "QEMU_PROG": str(b.qemu),
        "QEMU_IMG_PROG": str(b.qemu_img),
        "QEMU_IO_PROG": str(b.qemu_io),
        "QEMU_NBD_PROG": str(b.qemu_nbd),
        "QSD_PROG": str(b.qsd),
        "QEMU_OPTIONS": "-nodefaults -display none -accel qtest",
        "IMGFMT": fmt,
        "IMGPROTO": proto,
        "AIOMODE": settings.aiomode,
        "CACHEMODE": settings.cache,
        "CACHEMODE_IS_DEFAULT": "true" if settings.cachemode is None else "false",
        "IMGFMT_GENERIC": "false" if fmt in NON_GENERIC_FORMATS else "true",
        "QEMU_DEFAULT_MACHINE": tree.default_machine,
        "MALLOC_PERTURB_": malloc_perturb,
        "QEMU_IO_OPTIONS_NO_FMT": io_options,
    }
    for target, machine in MACHINE_FOR_TARGET.items():
        if b.qemu.name == f"qemu-system-{target}":
            env["QEMU_OPTIONS"] += f" -machine {machine}"
    for var in ("QEMU_IMG_OPTIONS", "QEMU_NBD_OPTIONS"):
        if var in user_env:
            env[var] = user_env[var]
    if fmt == "luks":
        env["IMGOPTSSYNTAX"] = "true"
        env["IMGKEYSECRET"] = "123456"
        imgopts = _add_option(imgopts, "iter-time", "10")
        env["QEMU_IO_OPTIONS"] = io_options
    else:
        env["IMGOPTSSYNTAX"] = "false"
        env["QEMU_IO_OPTIONS"] = f"{io_options} -f {fmt}"
    if fmt == "vmdk":
        imgopts = _add_option(imgopts, "zeroed_grain", "on")
    if imgopts is not None:
        env["IMGOPTS"] = imgopts
    if settings.print_qemu:
        env["PRINT_QEMU"] = "y"
    if settings.valgrind:
        env["VALGRIND_QEMU"] = "y"
    if settings.gdb:
        env["GDB_OPTIONS"] = gdb_options(user_env)
    env.update(tree.check_sets)
    return env


def gdb_options(user_env: Mapping[str, str]) -> str:
    """check's -gdb: the user's GDB_OPTIONS, or localhost:12345 when it is unset or empty."""
    return user_env.get("GDB_OPTIONS") or DEFAULT_GDB_OPTIONS


@dataclass(frozen=True)
class TestsBase:
    """What every run's environment starts from: the user's (as tests get it), check's options,
    this invocation's MALLOC_PERTURB_ and interpreter."""

    __test__ = False  # not a pytest class

    user_env: Mapping[str, str]
    malloc_perturb: str
    settings: Settings = field(default_factory=Settings)
    python: str = sys.executable

    def iotests(self, tree: QemuTree, fmt: str, proto: str, test_dir: Path, sock_dir: Path) -> dict[str, str]:
        """The iotests variables of one run."""
        return iotests_environment(tree, fmt, proto, python=self.python, test_dir=test_dir, sock_dir=sock_dir,
                                   malloc_perturb=self.malloc_perturb, user_env=self.user_env,
                                   settings=self.settings)


def malloc_perturb(user_env: Mapping[str, str]) -> str:
    """check takes MALLOC_PERTURB_ from the environment, else a random byte 1..254 per invocation."""
    return user_env.get("MALLOC_PERTURB_", str(random.randrange(1, 255)))


def child_environment(user_env: Mapping[str, str], iotests_env: Mapping[str, str],
                      tmp_dir: Path) -> dict[str, str]:
    """The full environment of the test process: check passes the user's on, plus ours.

    The user's GDB_OPTIONS is dropped as check drops it when not debugging (with --gdb, iotests_env
    carries it); TMPDIR points
    at the run's own temporary folder.
    """
    env = {k: v for k, v in user_env.items() if k != "GDB_OPTIONS"}
    env.update(iotests_env)
    env["TMPDIR"] = str(tmp_dir)
    return env


# Names of variables that look like credentials (CI job tokens, cloud keys, registry passwords).
# Tests never get them: a core file of a crashed QEMU holds its whole environment, and CI
# publishes the results folder.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE|AUTH|COOKIE|"
                         r"^CI_JOB_JWT", re.IGNORECASE)
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class TestsEnvironment:
    """The user's environment as the tests get it, and the names of the variables held back."""

    __test__ = False  # not a pytest class

    variables: dict[str, str]
    withheld: tuple[str, ...]


def environment_for_tests(environ: Mapping[str, str], pass_env: Sequence[str] = ()) -> TestsEnvironment:
    """The user's environment without what tests must not see.

    - variables whose names look like credentials (SECRET_NAME), unless named in pass_env;
      check's own variables (IMGKEYSECRET, ...) are never touched;
    - the PYTHONPATH entries that found the runner: under make check-block (ours or a QEMU
      tree's after tools/qemu-integrate) or the GitLab template, PYTHONPATH points at the
      runner's folder and its _deps; check's tests never see those.
    """
    keep = {*pass_env, *IOTESTS_VARIABLES}
    withheld = tuple(sorted(k for k in environ if SECRET_NAME.search(k) and k not in keep))
    env = {k: v for k, v in environ.items() if k not in withheld}
    mine = {str(DEPS.parent), str(DEPS)}
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if p and str(Path(p).resolve()) not in mine]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    return TestsEnvironment(env, withheld)


def public_environment(tree: QemuTree, formats: Sequence[str], protocols: Sequence[str], perturb: str,
                       user_env: Mapping[str, str], settings: Settings) -> dict[str, dict[str, str]]:
    """The iotests variables per format-protocol, for results.json (never the user's other variables)."""
    out: dict[str, dict[str, str]] = {}
    for fmt in formats:
        for proto in protocols:
            env = iotests_environment(tree, fmt, proto, python=sys.executable, test_dir=Path("<TEST_DIR>"),
                                      sock_dir=Path("<SOCK_DIR>"), malloc_perturb=perturb, user_env=user_env,
                                      settings=settings)
            names = (*IOTESTS_VARIABLES, *(k for k, _ in tree.check_sets))
            out[f"{fmt}-{proto}"] = {k: env[k] for k in names if k in env}
    return out
