"""junit.xml as GitLab reads it: one testcase per run, the diff as the failure text."""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from junit_xml import TestCase, TestSuite

from iotests_run.model import Result
from iotests_run.report.outcomes import PRESENTATION

# XML 1.0 forbids these; junit-xml raises on some of them, so they become U+FFFD.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Keep the file well under GitLab's 30 MB limit whatever the tests print: each text at most
# MAX_TEXT, and all of them together about TOTAL_TEXT (each run's share, down to MIN_TEXT).
MAX_TEXT = 64 * 1024
MIN_TEXT = 2 * 1024
TOTAL_TEXT = 16 * 1024 * 1024


def xml_text(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) > limit:
        text = text[:limit] + f"\n[... {len(text) - limit} more characters, see the artifacts folder]"
    return _NOT_XML.sub("\ufffd", text)


def classname(result: Result) -> str:
    return f"iotests.{result.run.combo}"


def text_limit(failing: int) -> int:
    """Each failing run's share of TOTAL_TEXT (two texts each), a power of two so that the cached cases
    of earlier rewrites stay valid while failures accumulate."""
    share = TOTAL_TEXT // max(2 * failing, 1)
    limit = MAX_TEXT
    while limit > MIN_TEXT and limit > share:
        limit //= 2
    return limit


@functools.cache
def _case(result: Result, tree_root: str, attachment_base: str, limit: int) -> TestCase:
    """One testcase, built once per result and limit: junit.xml is rewritten as runs finish."""
    run = result.run
    case = TestCase(name=run.test.name, classname=classname(result), elapsed_sec=result.duration_s,
                    file=f"{tree_root}/{run.test.key}")
    element = PRESENTATION[result.outcome].junit
    text = result.reason + (f"\n{result.recent}" if result.recent else "")
    if result.diagnostics:
        text += "\n\nDiagnostics collected before the run was killed:\n" + result.diagnostics
    if result.diff:
        text += "\n" + result.diff
    if result.artifacts:
        text += f"\nartifacts: {result.artifacts}"
    if element == "failure":
        case.add_failure_info(message=xml_text(result.reason, 1024), output=xml_text(text, limit))
    elif element == "error":
        case.add_error_info(message=xml_text(result.reason, 1024), output=xml_text(text, limit))
    elif element == "skipped":
        case.add_skipped_info(message=xml_text(result.reason, 1024), output=xml_text(result.reason))
    out = []
    if element is None and result.reason:  # flaky: passed, but say how
        out.append(f"{result.outcome.value}: {result.reason}")
    if result.casenotrun:
        out.append("cases not run:\n" + result.casenotrun.rstrip("\n"))
    if result.output_tail and element in ("failure", "error"):
        out.append(result.output_tail)
    # GitLab links [[ATTACHMENT|path]] lines of a testcase's system-out to artifact files.
    out += [f"[[ATTACHMENT|{attachment_base}/{path}]]" for path in result.attachments]
    if out:
        case.stdout = xml_text("\n".join(out), limit)
    if result.leaked:
        case.stderr = xml_text("leaked processes (killed by iotests-run):\n" + "\n".join(result.leaked), limit)
    return case


def junit_xml(results: Iterable[Result], tree_root: str = "tests/qemu-iotests", attachment_base: str = ".") -> str:
    """attachment_base: the results folder as GitLab should resolve it (relative to the job's folder)."""
    ordered = sorted(results, key=lambda r: (r.run.combo, r.run.test.key))
    limit = text_limit(sum(PRESENTATION[r.outcome].junit in ("failure", "error") for r in ordered))
    suites: dict[str, list[TestCase]] = {}
    for result in ordered:
        suites.setdefault(classname(result), []).append(_case(result, tree_root, attachment_base, limit))
    # junit-xml builds each suite; the document is serialised by ElementTree directly,
    # without junit-xml's pretty-printing pass, which costs more than everything else.
    root = ET.Element("testsuites")
    for name, cases in suites.items():
        root.append(TestSuite(name, cases).build_xml_doc())
    for attr in ("tests", "failures", "errors", "disabled"):
        root.set(attr, str(sum(int(s.get(attr, "0")) for s in root)))
    root.set("time", str(sum(float(s.get("time", "0")) for s in root)))
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
