"""run/admission.py: when one more run may start (the admission rule, the usable cores, the busy clock), and
the runner keeping to it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from iotests_run.run import admission as cpu
from iotests_run.run.admission import WINDOW_S, Admission
from support import FakeTree, run_cli, runs_by_test


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


@pytest.mark.unit
def test_up_to_one_more_than_the_cores_always_start() -> None:
    m = Machine()
    a = admission(m)
    assert a.floor == 3
    assert all(a.may_start(running) for running in range(3))


@pytest.mark.unit
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


@pytest.mark.unit
def test_never_more_than_jobs() -> None:
    m = Machine()
    a = admission(m, jobs=5)
    assert not a.may_start(4)  # the first window starts
    m.spend(10 * WINDOW_S, busy_cores=0.0)
    assert not a.may_start(5)
    assert a.may_start(4)


@pytest.mark.unit
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


@pytest.mark.unit
def test_the_tightest_cgroup_v2_quota_counts(tmp_path: Path) -> None:
    mount, own = _v2(tmp_path, {"ci": "300000 100000", "ci/job": "150000 100000", "ci/job/step": "max 100000"})
    quota = cpu.cgroup_quota(mount, own, mount)
    assert quota is not None and quota.cores == 1.5 and quota.usage == mount / "ci/job/cpu.stat"
    mount, own = _v2(tmp_path / "none", {"ci/job": "max 100000"})
    assert cpu.cgroup_quota(mount, own, mount) is None
    assert cpu.cgroup_quota(mount, tmp_path / "no-such-file", mount) is None


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_the_machines_busy_clock_moves() -> None:
    busy = cpu.Cpus.here().busy_clock()
    if busy is None:
        pytest.skip("no readable CPU accounting here")
    first, own = busy(), time.process_time()
    while time.process_time() - own < 0.3:  # keep this core busy
        pass
    assert busy() - first >= 0.2  # at least our own 0.3 s, give or take a clock tick


def _most_at_once(log: Path) -> int:
    events = sorted((float(t), +1 if kind == "start" else -1)
                    for kind, t in (line.split() for line in log.read_text().splitlines()))
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.process
def test_more_runs_start_only_while_cores_idle(fake_tree: FakeTree, tmp_path: Path) -> None:
    from iotests_run.run.admission import Cpus

    cpus = Cpus.here()
    cores = cpus.count
    busy = cpus.busy_clock()
    if busy is None:
        pytest.skip("no CPU accounting to judge idle cores by")
    before = busy()
    time.sleep(1)
    if (others := busy() - before) > 0.5:  # what this test asserts needs idle cores (a build beside it takes them)
        pytest.skip(f"the machine is busy ({others:.1f} cores used by other work): admission rightly holds runs back")
    jobs, count = cores + 5, 2 * (cores + 5)
    log = tmp_path / "events"
    stamp = f'echo "$1 $(date +%s.%N)" >> {log}'
    sleeper = f"stamp() {{ {stamp}; }}\nstamp start; sleep 3; stamp end\necho done\n"
    spinner = f"stamp() {{ {stamp}; }}\nstamp start; timeout 2 sh -c 'while :; do :; done'; stamp end\necho done\n"

    for i in range(count):
        fake_tree.add_test(f"{i + 1:03}", sleeper, out="done\n")
    proc = run_cli(["-j", str(jobs), *fake_tree.args(tmp_path / "sleepers")])
    assert proc.returncode == 0, proc.stderr
    assert f"{cores + 1} to {jobs} in parallel" in proc.stdout
    assert _most_at_once(log) >= cores + 4  # idle cores: the sleepers pile up beyond cores + 1
    cgroups = "a cgroup per run" in proc.stdout
    if cgroups:  # each run's CPU time, counted by its cgroup
        assert all(r["cpu_s"] < 0.5 for r in runs_by_test(tmp_path / "sleepers").values())

    log.unlink()
    for i in range(count):
        fake_tree.add_test(f"{i + 1:03}", spinner, out="done\n")
    proc = run_cli(["-j", str(jobs), *fake_tree.args(tmp_path / "spinners")])
    assert proc.returncode == 0, proc.stderr
    assert _most_at_once(log) <= cores + 2  # busy cores: (almost) no run beyond cores + 1
    if cgroups:
        assert all(r["cpu_s"] >= 1.0 for r in runs_by_test(tmp_path / "spinners").values())

    log.unlink()
    proc = run_cli(["-j", str(jobs), "--fixed-jobs", *fake_tree.args(tmp_path / "fixed")])
    assert proc.returncode == 0, proc.stderr
    assert f"{jobs} in parallel" in proc.stdout
    assert _most_at_once(log) == jobs


@pytest.mark.process
def test_cpu_time_only_where_a_cgroup_counted_it(fake_tree: FakeTree, tmp_path: Path) -> None:
    """Without a cgroup (--no-isolation: the marker tracker) what a run used is not counted: null, not 0."""
    # a child that spins 0.3 s and is gone before the test ends: only a cgroup still counts it
    fake_tree.add_test("001", "timeout 0.3 sh -c 'while :; do :; done'\necho done\n", out="done\n")
    proc = run_cli(["--no-isolation", *fake_tree.args(tmp_path / "marker")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert runs_by_test(tmp_path / "marker")[("qcow2", "001")]["cpu_s"] is None
    proc = run_cli(fake_tree.args(tmp_path / "cgroup"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if "a cgroup per run" in proc.stdout:
        cpu_s = runs_by_test(tmp_path / "cgroup")[("qcow2", "001")]["cpu_s"]
        assert isinstance(cpu_s, float) and cpu_s >= 0.2
