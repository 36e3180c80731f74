"""The GitLab CI template: its shape and options (unit), and its jobs run for real by
gitlab-ci-local on the reference tree (e2e): shards, JUnit, artifacts, the duration cache."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from iotests_run.affected.coverage_map import load
from iotests_run.cli.options import make_parser
from iotests_run.tree.qemu import reference_cache
from support import ReferenceTree

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = REPO / "tools" / "gitlab-ci" / "iotests.yml"
SHARD_JOB, REPORT_JOB, MAP_JOB = "iotests-qcow2", "iotests-qcow2-report", "iotests-coverage-map"
CACHE, MAP_CACHE = ".iotests-run-durations.json", "iotests-run-coverage-map"


@pytest.mark.unit
def test_template_publishes_junit_always_and_has_one_cache_writer() -> None:
    doc = yaml.safe_load(TEMPLATE.read_text())
    shard, report = doc[".iotests-run"], doc[".iotests-run-report"]
    assert shard["artifacts"]["when"] == "always" and report["artifacts"]["when"] == "always"
    assert shard["artifacts"]["reports"]["junit"] == "iotests-results-*/junit.xml"
    assert "junit" not in report["artifacts"].get("reports", {})  # the shards' runs, not counted twice
    # expose_as links the first path in the merge request; GitLab allows no globs or variables there
    assert report["artifacts"]["expose_as"] and report["artifacts"]["paths"][0] == "iotests-results/report.html"
    assert not any("*" in p or "$" in p for p in report["artifacts"]["paths"])
    assert shard["parallel"] >= 2
    caches = {c["key"]: c for c in shard["cache"]}
    assert caches["iotests-run-durations"]["policy"] == "pull" and report["cache"]["policy"] == "pull-push"
    assert CACHE in caches["iotests-run-durations"]["paths"] and CACHE in report["cache"]["paths"]
    assert report["when"] == "always" and report["cache"]["when"] == "always"
    assert doc[SHARD_JOB]["extends"] == ".iotests-run" and doc[REPORT_JOB]["needs"] == [SHARD_JOB]
    # the coverage map: one writer, asked for only (a schedule), its file the one the shards pull and read
    mapper = doc[".iotests-run-coverage-map"]
    assert mapper["cache"]["policy"] == "push" and caches[MAP_CACHE]["policy"] == "pull"
    assert mapper["cache"]["key"] == MAP_CACHE and mapper["cache"]["paths"] == caches[MAP_CACHE]["paths"]
    assert mapper["variables"]["IOTESTS_COVERAGE_MAP"] == shard["variables"]["IOTESTS_COVERAGE_MAP"] \
        == caches[MAP_CACHE]["paths"][0]
    assert mapper["rules"] == [{"if": "$IOTESTS_MAKE_COVERAGE_MAP"}]
    assert doc[MAP_JOB]["extends"] == ".iotests-run-coverage-map"


@pytest.mark.unit
def test_template_uses_only_options_the_runner_has() -> None:
    doc = yaml.safe_load(TEMPLATE.read_text())
    known = {opt for action in make_parser()._actions for opt in action.option_strings}
    script = " ".join(doc[".iotests-run"]["script"]) + " " + doc[".iotests-run"]["variables"]["IOTESTS_ARGS"]
    used = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", script.split("iotests_run", 1)[1]))
    assert used and used <= known, used - known
    opt_in = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", doc[".iotests-run"]["script"][0]))
    assert opt_in == {"--affected-by", "--coverage-map", "--affected-by-fallback"} and opt_in <= known
    merge = " ".join(doc[".iotests-run-report"]["script"])
    assert re.search(r"iotests_run merge \S+ \S+ --history " + re.escape(CACHE), merge), merge
    mapper = " ".join(doc[".iotests-run-coverage-map"]["script"]).split("iotests_run", 1)[1]
    used = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", mapper))
    assert "--coverage-map" in used and used <= known, used - known


# --- the template's jobs run by gitlab-ci-local ---------------------------------------------------------------

SMOKE = ["001", "002", "004", "005"]  # the local group the pipelines run: four quick tests, a few seconds each


def _gitlab_ci_local() -> Path:
    installed = reference_cache() / "gitlab-ci-local" / "node_modules" / ".bin" / "gitlab-ci-local"
    found = installed if installed.is_file() else Path(shutil.which("gitlab-ci-local") or "/nonexistent")
    if found.is_file() and shutil.which("rsync"):
        return found
    if os.environ.get("IOTESTS_RUN_REQUIRE_GITLAB_CI_LOCAL"):
        pytest.fail("gitlab-ci-local and rsync are required (IOTESTS_RUN_REQUIRE_GITLAB_CI_LOCAL is set)")
    pytest.skip("gitlab-ci-local or rsync is not installed (make gitlab-ci-local installs them)")


def _commit(project: Path, message: str) -> None:
    for args in (["add", "-A"], ["-c", "user.name=iotests-run", "-c", "user.email=ci@invalid", "commit", "-qm",
                                 message]):
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)


def _fork(top: Path, tree: ReferenceTree) -> Path:
    """A QEMU fork's checkout: the reference sources (linked, entry by entry, so that the iotests
    folder can gain a group.local), this runner at tests/qemu-iotests-runner/ as tools/qemu-integrate
    drops it in, and a .gitlab-ci.yml that includes a copy of the template."""
    project = top / "qemu"
    iotests = project / "tests" / "qemu-iotests"
    iotests.mkdir(parents=True)
    # no dot files: the fork's own .gitlab-ci.yml is written below, never through a link into the reference tree
    for entry in tree.source.iterdir():
        if entry.name not in ("tests", "build") and not entry.name.startswith("."):
            (project / entry.name).symlink_to(entry)
    for entry in (tree.source / "tests").iterdir():
        if entry.name not in ("qemu-iotests", "qemu-iotests-runner"):
            (project / "tests" / entry.name).symlink_to(entry)
    for entry in (tree.source / "tests" / "qemu-iotests").iterdir():
        if entry.name != "group.local":
            (iotests / entry.name).symlink_to(entry)
    (iotests / "group.local").write_text("".join(f"{t} ci-smoke\n" for t in SMOKE))
    shutil.copytree(REPO / "tests" / "qemu-iotests-runner" / "iotests_run",
                    project / "tests" / "qemu-iotests-runner" / "iotests_run",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(TEMPLATE, project / "iotests-run.yml")
    (project / ".gitlab-ci.yml").write_text("include:\n  - local: iotests-run.yml\n")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    _commit(project, "a QEMU fork")
    return project


def _pipeline(tool: Path, project: Path, tree: ReferenceTree, *variables: str,
              jobs: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """A pipeline (or only `jobs`) with the variables given, as GitLab would run it."""
    settings = [arg for v in ("IOTESTS_GROUPS=ci-smoke", f"QEMU_BUILD={tree.build}", *variables)
                for arg in ("--variable", v)]
    return subprocess.run(
        [str(tool), "--shell-isolation", "--no-artifacts-to-source", "--home", str(project.parent / "home"),
         *settings, *jobs], cwd=project, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)


def _shard_folders(project: Path) -> dict[int, Path]:
    """Each shard's artifacts, as GitLab keeps them: {1: .../iotests-results-1, 2: ...}."""
    found = sorted((project / ".gitlab-ci-local" / "artifacts").glob(f"{SHARD_JOB}*/iotests-results-*"))
    return {int(p.name.rsplit("-", 1)[1]): p for p in found}


def _junit_cases(folder: Path) -> list[tuple[str, bool]]:
    root = ET.parse(folder / "junit.xml").getroot()
    return [(c.get("name") or "", c.find("failure") is not None) for c in root.iter("testcase")]


def _junit_skipped(folder: Path) -> dict[str, str]:
    root = ET.parse(folder / "junit.xml").getroot()
    return {c.get("name") or "": (skip.get("message") or "") + (skip.text or "")
            for c in root.iter("testcase") if (skip := c.find("skipped")) is not None}


def _cached(project: Path) -> dict[str, float]:
    data = json.loads((project / ".gitlab-ci-local" / "cache" / "iotests-run-durations" / CACHE).read_text())
    (tree,) = data["trees"].values()
    return {k.split("/", 1)[1]: v for k, v in tree["durations"].items()}


def _job_log(log: str, job: str) -> str:
    return "\n".join(line for line in log.splitlines() if line.startswith(job))


@pytest.mark.e2e
def test_the_template_runs_sharded_keeps_its_artifacts_and_balances_from_its_cache(
        reference_tree: ReferenceTree, coverage_tree: ReferenceTree, tmp_path: Path) -> None:
    tool = _gitlab_ci_local()
    project = _fork(tmp_path, reference_tree)
    doc = yaml.safe_load(TEMPLATE.read_text())

    # 1. a cold pipeline: both shards pass, together they ran every selected run once
    first = _pipeline(tool, project, reference_tree)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-4000:]
    for job in (f"{SHARD_JOB}: [1/2]", f"{SHARD_JOB}: [2/2]", REPORT_JOB):
        assert re.search(rf"PASS +{re.escape(job)}", log), job
    shards = _shard_folders(project)
    assert sorted(shards) == [1, 2]
    cases = [case for folder in shards.values() for case in _junit_cases(folder)]
    assert sorted(cases) == [(t, False) for t in SMOKE]
    listed = doc[".iotests-run"]["artifacts"]
    for folder in shards.values():  # what the shard job lists as artifacts is there
        for pattern in [*listed["paths"], listed["reports"]["junit"]]:
            assert list(folder.parent.glob(pattern.rstrip("/"))), pattern
    report = project / ".gitlab-ci-local" / "artifacts" / REPORT_JOB
    for path in doc[".iotests-run-report"]["artifacts"]["paths"]:
        assert (report / path).exists(), path
    merged = json.loads((report / "iotests-results" / "results.json").read_text())
    assert sorted(r["test"] for r in merged["runs"]) == SMOKE and merged["complete"] is True
    assert (report / "iotests-results" / "report.html").read_text().count('<svg class="timeline"') == 2
    # the report job is the cache's one writer, and it holds every run's duration
    assert "exported cache" not in _job_log(log, f"{SHARD_JOB}: [") and "exported cache" in _job_log(log, REPORT_JOB)
    durations = _cached(project)
    assert sorted(durations) == SMOKE

    # 2. the next pipeline: both shards plan from the cache, so each predicts its runs' cached durations
    second = _pipeline(tool, project, reference_tree)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-4000:]
    loads = []
    for index, folder in _shard_folders(project).items():
        assert re.search(rf"{re.escape(SHARD_JOB)}: \[{index}/2\] imported cache", log)
        mine = [r["test"] for r in json.loads((folder / "results.json").read_text())["runs"]]
        note = re.search(rf"shard {index}/2: {len(mine)} of 4 runs, predicted ([\d.]+) s", log)
        assert note, log[-3000:]
        assert float(note.group(1)) == pytest.approx(sum(durations[t] for t in mine), abs=0.06)
        loads.append(sum(durations[t] for t in mine))
    # longest first onto the least loaded shard: no shard exceeds the mean by more than the longest run
    assert max(loads) <= sum(loads) / 2 + max(durations.values()) + 1e-6

    # 3. the coverage map job, as a schedule would run it: on the gcov build, into the map's cache
    mapped = _pipeline(tool, project, reference_tree, "IOTESTS_MAKE_COVERAGE_MAP=1",
                       f"QEMU_COVERAGE_BUILD={coverage_tree.build}", jobs=(MAP_JOB,))
    log = mapped.stdout + mapped.stderr
    assert mapped.returncode == 0 and re.search(rf"PASS +{MAP_JOB}", log), log[-4000:]
    cmap = load(project / ".gitlab-ci-local" / "cache" / MAP_CACHE / ".iotests-run-coverage-map.json.gz")
    assert sorted(cmap.runs) == [f"qcow2-file/{t}" for t in SMOKE]
    assert all(len(functions) > 300 for functions in cmap.runs.values())  # QEMU's, each run its own

    # 4. a regression: the shard running 001 fails, its artifacts and the merged report are kept
    # (no merge request base here: the map in the cache changes nothing, the full run)
    reference = project / "tests" / "qemu-iotests" / "001.out"
    text = reference.read_text()
    reference.unlink()
    reference.write_text(text + "a line 001 does not print\n")
    _commit(project, "a regression in 001's output")
    third = _pipeline(tool, project, reference_tree)
    log = third.stdout + third.stderr
    assert third.returncode != 0
    shards = _shard_folders(project)
    (bad,) = [i for i, folder in shards.items() if ("001", True) in _junit_cases(folder)]
    assert re.search(rf"FAIL +{re.escape(SHARD_JOB)}: \[{bad}/2\]", log)
    assert re.search(rf"PASS +{re.escape(SHARD_JOB)}: \[{3 - bad}/2\]", log)
    assert re.search(rf"FAIL +{re.escape(REPORT_JOB)}", log)  # it ran (when: always) and says so
    diff = shards[bad] / "runs" / "qcow2-file" / "001" / "diff.txt"
    assert "-a line 001 does not print" in diff.read_text()
    assert (report / "iotests-results" / "runs" / "qcow2-file" / "001" / "diff.txt").is_file()
    assert (report / "iotests-results" / "report.html").is_file()
    assert not any("not affected by the change" in why for f in shards.values() for why in _junit_skipped(f).values())

    # 5. a merge request pipeline (its base: the commit before the regression): with the map cached, the
    # shards run only what the change affects (001.out: 001's runs), report the others not run and why
    fifth = _pipeline(tool, project, reference_tree, "IOTESTS_AFFECTED_BY=HEAD~1")
    log = fifth.stdout + fifth.stderr
    assert fifth.returncode != 0
    shards = _shard_folders(project)
    assert sorted(case for folder in shards.values() for case in _junit_cases(folder)) == [
        ("001", True), *((t, False) for t in SMOKE[1:])]
    skipped = {test: why for folder in shards.values() for test, why in _junit_skipped(folder).items()}
    assert sorted(skipped) == SMOKE[1:], skipped
    assert all("not affected by the change (coverage map of" in why for why in skipped.values()), skipped
    for index in (1, 2):
        said = rf"{re.escape(SHARD_JOB)}: \[{index}/2\] .*\d of 4 runs affected by git diff HEAD~1"
        assert re.search(said, log), index
    assert re.search(rf"FAIL +{re.escape(REPORT_JOB)}", log)
    merged = project / ".gitlab-ci-local" / "artifacts" / REPORT_JOB / "iotests-results" / "summary.txt"
    assert "Selection: 1 of 4 runs affected by git diff HEAD~1" in merged.read_text().splitlines()[1]
