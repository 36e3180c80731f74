"""How an explanation of a hang or crash travels: from the dump's Evidence to the run's reason, results.json
(written and read back) and report.html."""

from pathlib import Path

import pytest

from iotests_run.debug.diagnostics import Evidence
from iotests_run.model import Outcome, Result, Run, TestCase
from iotests_run.report.html import html_report
from iotests_run.results.folder import Recorded, run_record
from iotests_run.run.verdict import Verdict, explained

pytestmark = pytest.mark.unit

HANG = Verdict(Outcome.HANG, "no CPU or output for 30 s")


def test_the_first_line_of_the_explanation_leads_the_reason() -> None:
    hang = Evidence(("gdb-1.txt",), "summary", explanation="deadlock: thread 1 (main) holds X\nthread 3 waits for X")
    verdict, explanation = explained(HANG, [hang])
    assert verdict.reason == "deadlock: thread 1 (main) holds X (no CPU or output for 30 s)"
    assert explanation == "deadlock: thread 1 (main) holds X\nthread 3 waits for X"
    assert verdict.outcome is Outcome.HANG


def test_a_cores_explanation_comes_before_the_hang_it_led_to() -> None:
    hang = Evidence((), "", explanation="waits in bdrv_drain")
    core = Evidence((), "", cause="qemu-io died of SIGSEGV", explanation="SIGSEGV in bdrv_set_backing_hd: freed node")
    verdict, explanation = explained(Verdict(Outcome.CRASH, "qemu-io died of SIGSEGV"), [hang, core])
    assert explanation.startswith("SIGSEGV in bdrv_set_backing_hd")
    assert verdict.reason.startswith("SIGSEGV in bdrv_set_backing_hd: freed node (")


def test_no_explanation_leaves_the_verdict_alone() -> None:
    assert explained(HANG, [Evidence((), "s")]) == (HANG, "")
    assert explained(HANG, []) == (HANG, "")


def test_the_explanation_is_recorded_read_back_and_shown_first(tmp_path: Path) -> None:
    test = TestCase(key="040", path=tmp_path / "040", groups=frozenset())
    result = Result(Run(test, "qcow2", "file"), Outcome.HANG, "deadlock: a (hang)", 30.0, diagnostics="backtraces",
                    explanation="deadlock: a\nthread 3 <b>waits</b>")
    record = run_record(result)
    assert record["explanation"] == "deadlock: a\nthread 3 <b>waits</b>"
    back = Recorded(tmp_path, {}, [record]).result(record, tmp_path, tmp_path)
    assert back.explanation == result.explanation
    page = html_report([result], {}, "t")
    why = page.index('<pre class="why">deadlock: a\nthread 3 &lt;b&gt;waits&lt;/b&gt;</pre>')
    assert why < page.index("backtraces", why)
