"""Kernel isolation for a run: its own network and mount namespaces, a cgroup, death with the runner,
and core dumps of whatever crashes, caught in an overlay over the test's folder.

All of it is set up in the forked child before it executes the test
(Popen's preexec_fn), through libc. What the machine does not allow (no root,
no user namespaces, no writable cgroup v2) is found once by a probe at start-up
and left out; the fallbacks are documented in README.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import resource
import signal
import socket
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


@dataclass(frozen=True)
class Isolation:
    """What each run gets; decided once per invocation by probe()."""

    network: bool = False  # own network namespace with its own loopback
    mounts: bool = False  # own mount namespace: mounts (FUSE exports) vanish with the run
    cores: bool = False  # core dumps allowed, written into an overlay over the test's folder
    cores_why_not: str = ""

    def describe(self) -> str:
        parts = [name for name, on in (("network namespace", self.network), ("mount namespace", self.mounts),
                                       ("core dumps kept", self.cores)) if on]
        text = ", ".join(parts) or "process tracking only"
        return text + (f" (no core dumps: {self.cores_why_not})" if self.cores_why_not else "")


@dataclass(frozen=True)
class Overlay:
    """The test's folder as the run sees it: the real one below, the run's own folder on top.

    QEMU's processes run in the iotests folder, and with a core_pattern like Debian's
    `core` the kernel writes core files there: into the overlay's upper folder, one per
    run, never into the source tree (other files a test writes there land there too).
    """

    folder: Path  # the iotests folder: the test's working directory, or its parent
    upper: Path
    work: Path

    def options(self) -> bytes:
        return f"lowerdir={self.folder},upperdir={self.upper},workdir={self.work}".encode()


def child_setup(isolation: Isolation, cgroup_procs: Path | None, overlay: Overlay | None = None) -> Callable[[], None]:
    """The preexec function: runs in the child between fork and exec."""

    def setup() -> None:
        os.setsid()
        # The runner's death (even SIGKILL) kills the test; the watchdog gets the rest.
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))
        if cgroup_procs is not None:
            with open(cgroup_procs, "w") as f:
                f.write("0")
        if isolation.network:
            _check(_libc.unshare(CLONE_NEWNET))
            _loopback_up()
        if isolation.mounts:
            _check(_libc.unshare(CLONE_NEWNS))
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
        if isolation.cores and overlay is not None:
            _check(_libc.mount(b"overlay", str(overlay.folder).encode(), b"overlay", 0, overlay.options()))
            os.chdir(os.getcwd())  # Popen entered cwd before this ran: enter it again, through the overlay
            _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))

    return setup


def _works(isolation: Isolation, cgroup_procs: Path | None = None, overlay: Overlay | None = None) -> bool:
    try:
        subprocess.run(["true"], preexec_fn=child_setup(isolation, cgroup_procs, overlay), check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")


def _cores_problem(mounts: bool, folder: Path, scratch: Path) -> str:
    """Why core dumps cannot be caught per run here, or "" when they can."""
    try:
        pattern = CORE_PATTERN.read_text().strip()
    except OSError:
        return "kernel.core_pattern unreadable"
    if pattern.startswith("|") or "/" in pattern:
        return f"kernel.core_pattern is {pattern}, not a file name in the crashing process's folder"
    if not mounts:
        return "no mount namespace for an overlay over the iotests folder"
    with TemporaryDirectory(prefix="iotr-probe-", dir=scratch) as tmp:
        upper, work = Path(tmp, "u"), Path(tmp, "w")
        upper.mkdir()
        work.mkdir()
        if not _works(Isolation(mounts=True, cores=True), overlay=Overlay(folder, upper, work)):
            return f"cannot mount an overlay over {folder}"
    return ""


def probe(wanted: bool = True, iotests: Path | None = None, scratch: Path | None = None) -> Isolation:
    """The strongest isolation this machine allows (none when not wanted)."""
    if not wanted:
        return Isolation()
    network = _works(Isolation(network=True))
    mounts = _works(Isolation(mounts=True))
    if iotests is None or scratch is None:
        return Isolation(network=network, mounts=mounts)
    why_not = _cores_problem(mounts, iotests, scratch)
    return Isolation(network=network, mounts=mounts, cores=not why_not, cores_why_not=why_not)


def cgroup_works(procs: Path) -> bool:
    return _works(Isolation(), procs)
