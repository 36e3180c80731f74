"""Fixtures: a fake QEMU tree (for the runner's own machinery) and the real reference tree."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import FakeTree, ReferenceTree, make_fake_tree


@pytest.fixture
def fake_tree(tmp_path: Path) -> FakeTree:
    return make_fake_tree(tmp_path)


def _build_reference(version: str, *extra: str) -> ReferenceTree:
    repo = Path(__file__).resolve().parents[3]
    script = repo / "tools" / "build-reference-qemu"
    if os.environ.get("IOTESTS_RUN_SKIP_E2E"):
        pytest.skip("IOTESTS_RUN_SKIP_E2E is set")
    proc = subprocess.run([str(script), "--version", version, *extra], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        pytest.fail(f"tools/build-reference-qemu failed:\n{proc.stderr[-3000:]}")
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return ReferenceTree(Path(values["QEMU_SOURCE"]), Path(values["QEMU_BUILD"]))


@pytest.fixture(scope="session")
def reference_tree() -> ReferenceTree:
    """The reference QEMU 7.2 tree, built (or reused) by tools/build-reference-qemu."""
    return _build_reference("7.2")


@pytest.fixture(scope="session")
def coverage_tree() -> ReferenceTree:
    """The reference 7.2 sources' gcov build (tools/build-reference-qemu --coverage)."""
    return _build_reference("7.2", "--coverage")


@pytest.fixture(scope="session")
def sanitizer_tree() -> ReferenceTree:
    """The reference 7.2 sources' ASan + UBSan build (tools/build-reference-qemu --sanitize)."""
    return _build_reference("7.2", "--sanitize")


@pytest.fixture(scope="session", params=["7.2", "10.0"])
def any_reference_tree(request: pytest.FixtureRequest) -> ReferenceTree:
    """Each QEMU generation the project supports (make check builds both)."""
    return _build_reference(str(request.param))


@pytest.fixture
def no_hang() -> Iterator[None]:
    """A read that blocks (a FIFO opened without O_NONBLOCK) fails the test instead of hanging it."""
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError("blocked on a read")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def no_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOME unset and no passwd entry for the uid (a bare CI container): pathlib cannot name a home."""
    for name in ("HOME", "XDG_CACHE_HOME", "IOTESTS_RUN_CACHE"):
        monkeypatch.delenv(name, raising=False)

    def nowhere() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(nowhere))


@pytest.fixture
def pass_fail_tree(fake_tree: FakeTree, tmp_path: Path) -> FakeTree:
    fake_tree.add_test("001", f"touch {tmp_path}/started\necho ok\n", out="ok\n", groups="quick")
    fake_tree.add_test("002", "echo bad\n", out="good\n", groups="quick")
    return fake_tree
