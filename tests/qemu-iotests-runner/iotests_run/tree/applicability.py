"""Static applicability: which runs a test declares it cannot take, read from its source.

check learns that a test does not apply to a format or protocol only by starting
it: bash tests call `_supported_fmt`, `_unsupported_fmt`, `_supported_proto`,
`_unsupported_proto` (common.rc), Python tests pass `supported_fmts=`,
`unsupported_fmts=`, `supported_protocols=`, `unsupported_protocols=` to
`iotests.main`, `iotests.script_main` or `iotests.script_initialize`. Reading
those declarations lets us record such runs as not run without starting them.

The rule is to never skip a run check would have run: a declaration counts only
when it is certain (a top-level bash line outside any block, with plain word
arguments; a single Python call whose arguments are literal lists). Anything
else leaves the run to be decided by running it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

BASH_DECLARATIONS = ("_supported_fmt", "_unsupported_fmt", "_supported_proto", "_unsupported_proto")
PYTHON_ENTRY_POINTS = ("main", "script_main", "script_initialize")
PLAIN_WORD = re.compile(r"^[A-Za-z0-9_.+-]+$")
# Top-level blocks, as iotests format them: opener and closer unindented, body indented.
KEYWORD_OPENER = re.compile(r"^(if|for|while|until|case|select)\b")
KEYWORD_CLOSED = re.compile(r"\b(fi|done|esac)\s*;?\s*$")
CLOSERS = re.compile(r"^(fi|done|esac|\})(\s|;|$)")


def _block_change(line: str) -> int:
    """+1 when an unindented line opens a block it does not close; `name()` alone opens nothing (its `{` does)."""
    if KEYWORD_OPENER.match(line):
        return 0 if KEYWORD_CLOSED.search(line) else 1
    if "{" in line and (line.startswith("{") or re.match(r"^[A-Za-z_][\w-]*\s*\(\)", line)):
        return 0 if line.rstrip().endswith("}") else 1
    return 0


@dataclass(frozen=True)
class Declarations:
    """What a test declares about formats and protocols.

    Each `supported_*` entry is one declaration (a bash call or the Python
    keyword); a run must satisfy every one of them.
    """

    language: str  # "bash" or "python"
    supported_fmts: tuple[tuple[str, ...], ...] = ()
    unsupported_fmts: tuple[str, ...] = ()
    supported_protos: tuple[tuple[str, ...], ...] = ()
    unsupported_protos: tuple[str, ...] = ()


def _bash(text: str) -> Declarations:
    found: dict[str, list[tuple[str, ...]]] = {name: [] for name in BASH_DECLARATIONS}
    depth = 0
    for line in text.splitlines():
        if not line or line[0].isspace() or line.startswith("#"):
            continue
        if CLOSERS.match(line):
            depth = max(0, depth - 1)
            continue
        change = _block_change(line)
        if change:
            depth += change
            continue
        words = line.split("#", 1)[0].split()
        if not words or words[0] not in BASH_DECLARATIONS:
            continue
        args = tuple(words[1:])
        if depth or not all(PLAIN_WORD.match(a) for a in args) or ";" in line:
            continue  # not certain: let the run decide
        found[words[0]].append(args)
    return Declarations("bash", tuple(found["_supported_fmt"]), sum(found["_unsupported_fmt"], ()),
                        tuple(found["_supported_proto"]), sum(found["_unsupported_proto"], ()))


def _literal_strings(node: ast.expr) -> tuple[str, ...] | None:
    if isinstance(node, (ast.List, ast.Tuple)) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return tuple(e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return None


def _python(text: str) -> Declarations:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return Declarations("python")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in PYTHON_ENTRY_POINTS and isinstance(n.func.value, ast.Name)
             and n.func.value.id == "iotests"]
    if len(calls) != 1:
        return Declarations("python")
    found: dict[str, tuple[str, ...]] = {}
    for kw in calls[0].keywords:
        if kw.arg in ("supported_fmts", "unsupported_fmts", "supported_protocols", "unsupported_protocols"):
            values = _literal_strings(kw.value)
            if values is None:
                return Declarations("python")
            found[kw.arg] = values
        elif kw.arg is None:
            return Declarations("python")  # **kwargs: not certain
    supported_fmts = found.get("supported_fmts")
    supported_protos = found.get("supported_protocols")
    return Declarations("python", (supported_fmts,) if supported_fmts else (), found.get("unsupported_fmts", ()),
                        (supported_protos,) if supported_protos else (), found.get("unsupported_protocols", ()))


def declarations(test: Path, python_shebang: bool) -> Declarations:
    try:
        text = test.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return Declarations("python" if python_shebang else "bash")
    return _python(text) if python_shebang else _bash(text)


def not_applicable(decl: Declarations, fmt: str, proto: str, fmt_is_generic: bool) -> str | None:
    """check's not-run reason for this format and protocol, or None when the test may apply."""
    fmt_reason = f"not suitable for this image format: {fmt}"
    for listed in decl.supported_fmts:
        if fmt not in listed and not ("generic" in listed and fmt_is_generic):
            return fmt_reason
    if fmt in decl.unsupported_fmts:
        return fmt_reason
    proto_reason = f"not suitable for this {'image protocol' if decl.language == 'bash' else 'protocol'}: {proto}"
    if decl.language == "python" and any("generic" in listed for listed in decl.supported_protos):
        return None  # iotests.py returns before looking at unsupported_protocols
    for listed in decl.supported_protos:
        if proto not in listed and "generic" not in listed:
            return proto_reason
    if proto in decl.unsupported_protos:
        return proto_reason
    return None
