"""Protocols that need a driver and a service: a clear not-run reason when either is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotests_run.model import Run, TestCase
from iotests_run.run.execute import _isolation_for
from iotests_run.run.isolation import Isolation
from iotests_run.tree import services
from support import FakeTree, run_cli


def _build(tmp_path: Path, *defined: str) -> Path:
    lines = [f"#define {s} 1" if s in defined else f"#undef {s}" for s, _ in services.DRIVERS.values()]
    (tmp_path / "config-host.h").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_a_build_without_the_driver_says_which_package_it_needs(tmp_path: Path) -> None:
    build = _build(tmp_path)
    assert services.unavailable("ssh", build) == (
        "protocol ssh: the QEMU build has no ssh driver (CONFIG_LIBSSH; configure with libssh-dev)")
    assert "libfuse3-dev" in services.unavailable("fuse", build)
    assert services.unavailable("file", build) == "" and services.unavailable("nbd", build) == ""


def test_with_the_driver_the_service_is_probed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = _build(tmp_path, "CONFIG_LIBSSH", "CONFIG_LIBNFS", "CONFIG_RBD")
    monkeypatch.setattr(services, "_port_open", lambda port: False)
    assert services.unavailable("ssh", build) == "protocol ssh: no sshd listening on 127.0.0.1:22"
    assert "2049" in services.unavailable("nfs", build)
    monkeypatch.setattr(services, "_port_open", lambda port: True)
    monkeypatch.setattr(services, "_command_works", lambda argv: argv[0] == "ssh")
    assert services.unavailable("ssh", build) == "" and services.unavailable("nfs", build) == ""
    assert "rbd ls" in services.unavailable("rbd", build)


def test_runs_over_the_machines_network_keep_it() -> None:
    test = TestCase("001", Path("001"), frozenset())
    full = Isolation(network=True, mounts=True)
    assert _isolation_for(Run(test, "raw", "ssh"), full) == Isolation(network=False, mounts=True)
    assert _isolation_for(Run(test, "raw", "nbd"), full) == full  # qemu-nbd listens inside the run


@pytest.mark.process
def test_missing_service_makes_every_run_of_its_protocol_not_run(fake_tree: FakeTree, tmp_path: Path) -> None:
    fake_tree.add_test("001", "echo ok\n", out="ok\n")
    _build(fake_tree.build)  # configured without any of the four drivers
    results = tmp_path / "r"
    listed = run_cli(["--list", "-p", "file,ssh,fuse", *fake_tree.args(results)])
    assert listed.returncode == 0, listed.stderr
    rows = {tuple(line.split("\t")[:3]): line.split("\t")[3] for line in listed.stdout.splitlines()}
    assert rows[("001", "qcow2", "file")] == "run"
    assert rows[("001", "qcow2", "ssh")].startswith("skip: protocol ssh: the QEMU build has no ssh driver")
    assert rows[("001", "qcow2", "fuse")].startswith("skip: protocol fuse: ")
