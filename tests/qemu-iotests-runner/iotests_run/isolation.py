"""Kernel isolation for a run: its own network and mount namespaces, a cgroup, death with the runner.

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
import signal
import socket
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

    def describe(self) -> str:
        parts = [name for name, on in (("network namespace", self.network), ("mount namespace", self.mounts)) if on]
        return ", ".join(parts) or "process tracking only"


def child_setup(isolation: Isolation, cgroup_procs: Path | None) -> Callable[[], None]:
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

    return setup


def _works(isolation: Isolation, cgroup_procs: Path | None = None) -> bool:
    try:
        subprocess.run(["true"], preexec_fn=child_setup(isolation, cgroup_procs), check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def probe(wanted: bool = True) -> Isolation:
    """The strongest isolation this machine allows (none when not wanted)."""
    if not wanted:
        return Isolation()
    network = _works(Isolation(network=True))
    mounts = _works(Isolation(mounts=True))
    return Isolation(network=network, mounts=mounts)


def cgroup_works(procs: Path) -> bool:
    return _works(Isolation(), procs)
