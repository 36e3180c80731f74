"""Text that came from tests or from files made safe to print: no control character reaches a terminal raw.

A test's output, its .notrun text and names in a merged results.json may hold escape
sequences that would rewrite a terminal (or a CI log viewer that renders them), or line
breaks that would forge lines in TAP and one-line error messages.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls (an 8-bit CSI is 0x9b).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def terminal_safe(text: str) -> str:
    """Lines kept, every other control character shown as \\xNN."""
    return _CONTROLS.sub(_escape, text)


def printable(text: str) -> str:
    """One line: newlines and tabs escaped too (for names and values inside a message)."""
    return terminal_safe(text).replace("\n", "\\n").replace("\t", "\\t")
