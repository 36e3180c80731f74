"""report/junit.py: JUnit as GitLab reads it, bounded per run and in total."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from iotests_run.model import Outcome
from iotests_run.report.junit import junit_xml
from support import RESULTS, result

pytestmark = pytest.mark.unit


def test_junit_cases_as_gitlab_reads_them() -> None:
    root = ET.fromstring(junit_xml(RESULTS))
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert len(cases) == 5
    failed = cases[("iotests.qcow2-file", "002")]
    assert failed.get("file") == "tests/qemu-iotests/002"
    assert failed.get("time") == "2.000000"
    failure = failed.find("failure")
    assert failure is not None and failure.text is not None
    assert failure.text.startswith("output mismatch\n--- a")
    assert "+y\ufffd" in failure.text and "artifacts: runs/qcow2-file/002" in failure.text
    skipped = cases[("iotests.qcow2-file", "named")].find("skipped")
    assert skipped is not None and skipped.get("message") == "not suitable for this image format: qcow2"
    assert cases[("iotests.raw-file", "001")].find("failure") is None
    assert cases[("iotests.qcow2-file", "003")].find("error") is not None


def test_junit_text_is_bounded() -> None:
    huge = result("004", Outcome.FAIL, reason="output mismatch", diff="x" * 10_000_000)
    assert len(junit_xml([huge])) < 200_000


def test_junit_is_bounded_in_total_not_only_per_run() -> None:
    """660 failing runs with 1 MB diffs (qcow2+raw+qed quick all failing) stay under GitLab's 30 MB."""
    diff = "+" + "y" * 1_000_000
    many = [result(f"{i:03}", Outcome.FAIL, fmt=fmt, reason="output mismatch", diff=diff, output_tail="o" * 4096)
            for fmt in ("qcow2", "raw", "qed") for i in range(220)]
    xml = junit_xml(many)
    assert len(xml.encode()) < 20_000_000
    assert len(ET.fromstring(xml).findall(".//failure")) == 660
    few = ET.fromstring(junit_xml(many[:3])).find(".//failure")
    assert few is not None and len(few.text or "") > 60_000  # a few failures still get their full share
