"""`iotests-run shell [-f FMT] [-p PROTO] [OPTIONS] [-- CMD ...]`: check's `check -- CMD`, in one sandbox.

CMD (default: $SHELL, else /bin/sh) runs in the iotests folder with the environment a run of that format
and protocol gets (TEST_DIR, SOCK_DIR, TMPDIR of a fresh sandbox made as a run's, QEMU_*_PROG, IMGFMT, ...:
tree.environment, run.sandbox), for reproducing a test by hand. Unlike a run it is not isolated (no
namespaces, no cgroup, no limits): it is the developer's own command. The sandbox is removed when CMD ends;
the exit status is CMD's (128 + N when a signal N ended it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from iotests_run.cli.options import add_environment_options, settings_of, variable_name
from iotests_run.errors import Parser, UsageError
from iotests_run.run.sandbox import ShortRoot, default_scratch
from iotests_run.text import printable
from iotests_run.tree.environment import TestsBase, child_environment, environment_for_tests, malloc_perturb
from iotests_run.tree.qemu import QemuTree, open_tree

SLOT = "shell"


def make_parser() -> Parser:
    p = Parser(prog="iotests-run shell", description="Run CMD (default: $SHELL) in one sandbox, with exactly the "
               "environment a test of that format and protocol gets, as check's `check -- CMD`.")
    p.add_argument("-f", "--format", default="qcow2", help="image format (default: %(default)s)")
    p.add_argument("-p", "--protocol", default="file", help="protocol (default: %(default)s)")
    add_environment_options(p)
    p.add_argument("--qemu-source", metavar="DIR", help="QEMU source tree")
    p.add_argument("--qemu-build", metavar="DIR", help="QEMU build folder")
    p.add_argument("--scratch", metavar="DIR", type=Path, default=None,
                   help="where the sandbox lives (default: as a run's)")
    p.add_argument("--pass-env", metavar="NAME", type=variable_name, action="append", default=[],
                   help="let CMD see this variable although its name looks like a credential; repeatable")
    p.set_defaults(debug=False)  # -d is an argument of a test, not of its environment
    return p


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Our options before `--`, CMD after it (check's form)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    if at == len(argv) - 1:
        raise UsageError("shell: nothing after '--' (give a command, or leave out '--' for $SHELL)")
    return argv[:at], argv[at + 1:]


def _choose(kind: str, value: str, known: Sequence[str], tree: QemuTree) -> str:
    if value not in known:
        raise UsageError(f"shell: unknown {kind}: {printable(value)} (QEMU {tree.version} knows: {', '.join(known)})")
    return value


def _program(command: list[str], environ: dict[str, str]) -> list[str]:
    """CMD with its program found on the PATH it will run with; one line when it is not there."""
    found = shutil.which(command[0], path=environ.get("PATH"))
    if found is None:
        raise UsageError(f"shell: command not found: {printable(command[0])}")
    return [found, *command[1:]]


def main(argv: Sequence[str]) -> int:
    ours, command = split_command(argv)
    args = make_parser().parse_args(ours)
    tree = open_tree(args.qemu_source, args.qemu_build, os.environ, Path.cwd())
    fmt = _choose("format", args.format, tree.formats, tree)
    proto = _choose("protocol", args.protocol, tree.protocols, tree)
    scratch = (args.scratch or default_scratch(tree.build)).resolve()
    problem = ShortRoot.check_base(scratch)
    if problem:
        raise UsageError(f"--scratch {scratch} {problem}")
    tests_env = environment_for_tests(os.environ, args.pass_env)
    base = TestsBase(tests_env.variables, malloc_perturb(os.environ), settings_of(args))
    command = command or [os.environ.get("SHELL") or "/bin/sh"]
    root = ShortRoot(scratch)
    try:
        box = root.sandbox(SLOT, root.path / SLOT / "kept")  # nothing is kept: run_dir stays unmade
        box.create()
        iotests_env = base.iotests(tree, fmt, proto, box.test_dir, box.sock_dir)
        env = child_environment(base.user_env, iotests_env, box.tmp_dir)
        program = _program(command, env)
        print(f"iotests-run shell: {fmt}-{proto} sandbox of QEMU {tree.version}: TEST_DIR={box.test_dir} "
              f"SOCK_DIR={box.sock_dir} (removed when {printable(command[0])} ends)", file=sys.stderr, flush=True)
        return _run(program, tree.iotests, env)
    finally:
        root.close()


def _run(program: list[str], cwd: Path, env: dict[str, str]) -> int:
    """CMD in the foreground; Ctrl-C is CMD's to handle (as in a shell), not ours."""
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)  # a handler: CMD gets the default back
    try:
        code = subprocess.run(program, cwd=cwd, env=env, check=False).returncode
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - code if code < 0 else code
