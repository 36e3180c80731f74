"""When one more run may start: the admission rule, the usable cores, the busy clock."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from iotests_run.run import admission as cpu
from iotests_run.run.admission import WINDOW_S, Admission

pytestmark = pytest.mark.unit


class Machine:
    """A clock and a busy-seconds counter the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.busy = 50.0
        self.reads = 0  # of the busy clock

    def spend(self, seconds: float, busy_cores: float) -> None:
        self.now += seconds
        self.busy += seconds * busy_cores


def admission(machine: Machine, jobs: int = 8, cores: int = 2, fixed: bool = False) -> Admission:
    def busy() -> float:
        machine.reads += 1
        return machine.busy
    return Admission(jobs, cores, busy, fixed=fixed, clock=lambda: machine.now)


def test_up_to_one_more_than_the_cores_always_start() -> None:
    m = Machine()
    a = admission(m)
    assert a.floor == 3
    assert all(a.may_start(running) for running in range(3))


def test_beyond_the_floor_one_run_per_idle_window() -> None:
    m = Machine()
    a = admission(m)
    assert not a.may_start(3)  # no window measured yet
    m.spend(WINDOW_S * 0.51, busy_cores=0.0)
    assert not a.may_start(3)  # the window is not over
    m.spend(WINDOW_S * 0.51, busy_cores=0.0)
    assert a.may_start(3)
    assert not a.may_start(4)  # the next one waits for a window of its own
    m.spend(WINDOW_S * 1.01, busy_cores=1.0)  # one core idle
    assert a.may_start(4)
    m.spend(WINDOW_S * 1.01, busy_cores=1.9)  # cores busy: the sleepers' share is taken
    assert not a.may_start(5)
    m.spend(WINDOW_S * 1.01, busy_cores=2.0)
    assert not a.may_start(5)
    assert a.extra_started == 2
    reads = m.reads
    for _ in range(5):  # asked again within the window: the busy clock is not read
        m.spend(WINDOW_S / 10, busy_cores=0.0)
        assert not a.may_start(5)
    assert m.reads == reads


def test_never_more_than_jobs() -> None:
    m = Machine()
    a = admission(m, jobs=5)
    assert not a.may_start(4)  # the first window starts
    m.spend(10 * WINDOW_S, busy_cores=0.0)
    assert not a.may_start(5)
    assert a.may_start(4)


def test_fixed_or_without_a_busy_clock_it_is_a_plain_limit() -> None:
    m = Machine()
    for a in (admission(m, jobs=6, fixed=True), Admission(6, 2, None)):
        assert a.floor == 6
        assert a.may_start(5) and not a.may_start(6)
        assert a.describe() == "6 in parallel"
    assert admission(m, jobs=6).describe() == "3 to 6 in parallel (more than 3 only while cores idle)"
    assert admission(m, jobs=2).floor == 2


def _v2(tmp_path: Path, limits: dict[str, str], own: str = "0::/ci/job/step\n") -> tuple[Path, Path]:
    mount = tmp_path / "cgroup"
    (mount / "ci/job/step").mkdir(parents=True, exist_ok=True)
    for rel, cpu_max in limits.items():
        (mount / rel / "cpu.max").write_text(cpu_max + "\n")
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text(own)
    return mount, self_cgroup


def test_the_tightest_cgroup_v2_quota_counts(tmp_path: Path) -> None:
    mount, own = _v2(tmp_path, {"ci": "300000 100000", "ci/job": "150000 100000", "ci/job/step": "max 100000"})
    quota = cpu.cgroup_quota(mount, own, mount)
    assert quota is not None and quota.cores == 1.5 and quota.usage == mount / "ci/job/cpu.stat"
    mount, own = _v2(tmp_path / "none", {"ci/job": "max 100000"})
    assert cpu.cgroup_quota(mount, own, mount) is None
    assert cpu.cgroup_quota(mount, tmp_path / "no-such-file", mount) is None


def test_cgroup_v1_quota_as_docker_sets_it(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    cpu_dir, acct_dir = mount / "cpu", mount / "cpuacct"
    for d in (cpu_dir, acct_dir):
        d.mkdir(parents=True)
    # the container sees its own cgroup at the mount's root; /proc/self/cgroup names the host's path
    (cpu_dir / "cpu.cfs_quota_us").write_text("250000\n")
    (cpu_dir / "cpu.cfs_period_us").write_text("100000\n")
    (acct_dir / "cpuacct.usage").write_text("7500000000\n")
    own = tmp_path / "self-cgroup"
    own.write_text("12:memory:/docker/0123\n4:cpu,cpuacct:/docker/0123\n0::/system.slice/docker-0123.scope\n")
    quota = cpu.cgroup_quota(mount, own, mount)
    assert quota is not None and quota.cores == 2.5 and quota.used_seconds() == 7.5
    (cpu_dir / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert cpu.cgroup_quota(mount, own, mount) is None


def test_usable_cores_follow_affinity_and_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    mount, own = _v2(tmp_path, {"ci/job": "250000 100000"})
    monkeypatch.setattr(cpu, "CGROUP_MOUNT", mount)
    monkeypatch.setattr(cpu, "SELF_CGROUP", own)
    monkeypatch.setattr(cpu, "cgroup2_mount", lambda: mount)
    cpus = cpu.Cpus.here()
    assert cpus.count == 3  # docker --cpus 2.5 on 8 cores
    (mount / "ci/job/cpu.stat").write_text("usage_usec 4500000\nuser_usec 3000000\n")
    busy = cpus.busy_clock()
    assert busy is not None and busy() == 4.5  # the quota'd cgroup's usage, not the idle machine's
    (mount / "ci/job/cpu.stat").unlink()
    a = Admission(8, 3, busy)
    assert not a.may_start(4) and a.busy is None  # accounting gone: no run beyond the floor, no error
    assert a.may_start(3)
    (mount / "ci/job/cpu.max").write_text("max 100000\n")
    assert cpu.Cpus.here() == cpu.Cpus(8, None)


def test_the_machines_busy_clock_moves() -> None:
    busy = cpu.Cpus.here().busy_clock()
    if busy is None:
        pytest.skip("no readable CPU accounting here")
    first, own = busy(), time.process_time()
    while time.process_time() - own < 0.3:  # keep this core busy
        pass
    assert busy() - first >= 0.2  # at least our own 0.3 s, give or take a clock tick
