"""End to end on the 7.2 sanitizer build (ASan + UBSan): real tests pass under the runner's sanitizer options, and
the injected use-after-free (tools/bugs.d/stream-filter-uaf, on the sanitizer bug tree) is a crash whose explanation
is the ASan report's first lines, the full report kept and shown."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from iotests_run.tree.sanitizers import sanitizers_of
from support import REPO, ReferenceTree, run_cli

pytestmark = pytest.mark.e2e

sys.path.insert(0, str(REPO / "tools"))
from iotests_tools import bugtrees  # noqa: E402

SANITIZER_BUGS = [b for b in bugtrees.bugs() if b.kind == "sanitizer"]


def test_real_tests_pass_on_the_sanitizer_build(sanitizer_tree: ReferenceTree, tmp_path: Path) -> None:
    """qemu-io (001), qemu-system with a stream job (161), and Python tests with IOThreads and jobs (256) and stream
    and commit jobs under throttling (258) run clean under ASan and UBSan with the runner's options (slow unwinding on
    every allocation included: these four take about 10 s of CPU): no report, nothing kept."""
    assert sanitizers_of(sanitizer_tree.build / "qemu-img") == ("address", "undefined")
    assert sanitizers_of(sanitizer_tree.build / "qemu-system-x86_64") == ("address", "undefined")
    results = tmp_path / "r"
    tests = ("001", "161", "256", "258")
    done = run_cli([*sanitizer_tree.args(results), "-f", "qcow2", "--retry", "0", *tests])
    data = json.loads((results / "results.json").read_text())
    outcomes = {r["test"]: (r["outcome"], r.get("reason", "")) for r in data["runs"]}
    assert outcomes == {t: ("pass", "") for t in tests}, done.stdout + done.stderr


@pytest.mark.parametrize("bug", SANITIZER_BUGS, ids=[b.name for b in SANITIZER_BUGS])
def test_a_use_after_free_is_a_crash_explained_by_the_asan_report(bug: bugtrees.Bug, tmp_path: Path) -> None:
    if os.environ.get("IOTESTS_RUN_SKIP_E2E"):
        pytest.skip("IOTESTS_RUN_SKIP_E2E is set")
    got = bugtrees.run_bug(bug, tmp_path / bug.name)
    print(f"{bug.name}: {got.outcome}: {got.explanation}")
    assert got.outcome == "crash", f"{bug.name}: {got.outcome}: {got.reason}"
    assert got.named, f"{bug.name}: explanation {got.explanation!r} does not match {bug.expect!r}"
    data = json.loads((got.results / "results.json").read_text())
    (run,) = [r for r in data["runs"] if r["test"] == bug.test]
    assert run["reason"].startswith(got.first_line)
    reports = [a for a in run["attachments"] if re.search(r"/sanitizer/qemu-system-x86_64\.\d+\.txt$", a)]
    assert reports, run["attachments"]
    text = (got.results / reports[0]).read_text()
    assert "ERROR: AddressSanitizer: heap-use-after-free" in text and "freed by thread" in text
    assert got.explanation.splitlines()[-1].startswith(f"AddressSanitizer report: {reports[0]}")
    html = (got.results / "report.html").read_text()
    assert "heap-use-after-free" in html and reports[0] in html
