"""Protocols that need something outside QEMU: is it there? Asked once per invocation, before planning.

file and nbd need nothing. fuse needs a QEMU built with FUSE exports and a usable
/dev/fuse; ssh, nfs and rbd need QEMU's driver and a service on this machine (see
README.md). When one is missing, every run over that protocol is recorded as not
run with the reason, instead of each test failing its own way.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

PROBE_TIMEOUT_S = 5.0
# These reach their service over the machine's network: their runs keep the host's network namespace.
HOST_NETWORK_PROTOCOLS = frozenset({"ssh", "nfs", "rbd"})

# protocol -> (config-host.h symbol, the -dev package QEMU's configure needs for it)
DRIVERS = {
    "fuse": ("CONFIG_FUSE", "libfuse3-dev"),
    "ssh": ("CONFIG_LIBSSH", "libssh-dev"),
    "nfs": ("CONFIG_LIBNFS", "libnfs-dev"),
    "rbd": ("CONFIG_RBD", "librbd-dev"),
}


def _configured(build: Path, symbol: str) -> bool | None:
    """Whether the build was configured with symbol (None: no config-host.h to tell)."""
    try:
        text = (build / "config-host.h").read_text(errors="replace")
    except OSError:
        return None
    return f"#define {symbol} " in text or f"#define {symbol}\n" in text


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _command_works(argv: list[str]) -> bool:
    if shutil.which(argv[0]) is None:
        return False
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=PROBE_TIMEOUT_S).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _fuse() -> str:
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "no usable /dev/fuse"
    return ""


def _ssh() -> str:
    if not _port_open(22):
        return "no sshd listening on 127.0.0.1:22"
    user = os.environ.get("USER") or "this user"
    if not _command_works(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "127.0.0.1", "true"]):
        return f"no passwordless ssh login to 127.0.0.1 for {user} (key in authorized_keys, host in known_hosts)"
    return ""


def _nfs() -> str:
    return "" if _port_open(2049) else "no NFS server on 127.0.0.1:2049 (export / to 127.0.0.1, read-write)"


def _rbd() -> str:
    return "" if _command_works(["rbd", "ls", "rbd"]) else "no Ceph cluster answering `rbd ls rbd`"


SERVICES: dict[str, Callable[[], str]] = {"fuse": _fuse, "ssh": _ssh, "nfs": _nfs, "rbd": _rbd}


def unavailable(protocol: str, build: Path) -> str:
    """Why runs over this protocol cannot work on this machine and build, or "" when they can."""
    if protocol in DRIVERS:
        symbol, package = DRIVERS[protocol]
        if _configured(build, symbol) is False:
            return f"protocol {protocol}: the QEMU build has no {protocol} driver ({symbol}; configure with {package})"
    probe = SERVICES.get(protocol)
    why = probe() if probe else ""
    return f"protocol {protocol}: {why}" if why else ""
