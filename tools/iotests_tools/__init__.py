"""The code of the Python tools in tools/ (bench, durations-table, flaky-rates, mutants, qemu-integrate,
repeat-overhead).

Each tools/<name> is a thin script calling main() of iotests_tools/<name>.py, so that the code is an
ordinary module that ruff and mypy check and tests import. The tools run from a checkout: the
runner's package and the tests' helpers (support.py) are imported from its folders, never from an
installed copy, so a tool always measures the code beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1]
REPO = TOOLS.parent
RUNNER = REPO / "tests" / "qemu-iotests-runner"
TESTS = RUNNER / "tests"

for _folder in (TESTS, RUNNER):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


def summary(doc: str | None) -> str:
    """A tool's one-paragraph description for --help: the first paragraph of its module docstring."""
    return (doc or "").split("\n\n")[0]
