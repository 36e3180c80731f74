"""Find the iotests of a tree and select them exactly as QEMU's check does.

Facts carried over from check: tests are `NNN` files and `tests/NAME` files
with a `tests/NAME.out` beside them; a test's groups are the words after the
first line starting with `# group: `; `group.local` adds `TEST group...` lines;
`disabled` is excluded unless named; individually named tests are added after
group exclusion; `-x` cannot be combined with a bare list of tests; `--start-from TEST` drops the
sorted selection's tests before TEST (which must be among them).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from iotests_run.errors import SetupError, UsageError
from iotests_run.model import TestCase
from iotests_run.text import printable

GROUP_PREFIX = "# group: "
# The characters of check's own test names; a file named otherwise (as a patch under test may
# add) would carry markup into report.html and forged lines into TAP, so it is refused.
TEST_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
PYTHON_SHEBANG = "#!/usr/bin/env python3"


def _read_header(path: Path) -> tuple[bool, list[str]]:
    """Whether check starts the test with the interpreter, and its groups."""
    with path.open(encoding="utf-8", errors="replace") as f:
        python = f.readline().rstrip() == PYTHON_SHEBANG
        f.seek(0)
        for line in f:
            if line.startswith(GROUP_PREFIX):
                return python, line.split()[2:]
    return python, []


@dataclass(frozen=True)
class Catalog:
    iotests: Path
    tests: dict[str, TestCase]  # key: path relative to iotests ("040", "tests/foo")

    def all_groups(self) -> set[str]:
        return {g for t in self.tests.values() for g in t.groups}

    def key_of(self, name: str) -> str:
        """check's test-name rule: `1` -> `001`; other names live in tests/."""
        if "/" in name:
            raise UsageError(f"unknown test: {printable(name)} "
                             "(name tests as check does, e.g. 040 or backing-file-invalidation)")
        key = f"{int(name):03}" if re.fullmatch(r"\d+", name) else f"tests/{name}"
        if key not in self.tests:
            raise UsageError(f"unknown test: {printable(name)}")
        return key

    def select(self, names: list[str], groups: list[str], exclude: list[str],
               start_from: str | None = None) -> list[TestCase]:
        known = self.all_groups()
        for g in (*groups, *exclude):
            if g not in known:
                raise UsageError(f"unknown group: {printable(g)}")
        keys = [self.key_of(n) for n in names]
        chosen: set[str] = set()
        if groups:
            chosen = {k for k, t in self.tests.items() if t.groups & set(groups)}
        elif names:
            if exclude:
                raise UsageError(f"cannot exclude groups ({','.join(exclude)}) from individually named tests")
        else:
            chosen = set(self.tests)
        dropped = set(exclude)
        if "disabled" not in groups and "disabled" not in exclude:
            dropped.add("disabled")
        chosen = {k for k in chosen if not (self.tests[k].groups & dropped)}
        chosen.update(keys)
        ordered = sorted(chosen)  # check's order: numbered tests, then tests/NAME
        if start_from is not None:
            ordered = ordered[_position(ordered, self.key_of(start_from), start_from):]
        return [self.tests[k] for k in ordered]


def _position(ordered: list[str], key: str, name: str) -> int:
    """Where --start-from's test is in the selection (check's rule: it must be one of them)."""
    if key not in ordered:
        raise UsageError(f"--start-from {printable(name)}: not among the selected tests")
    return ordered.index(key)


def discover(iotests: Path) -> Catalog:
    if not iotests.is_dir():
        raise SetupError(f"no iotests folder: {iotests}")
    # Regular files only: a folder or a dangling link named like a test is no test (check would crash on it).
    keys = [p.name for p in iotests.glob("[0-9][0-9][0-9]") if p.is_file()]
    named = iotests / "tests"
    if named.is_dir():
        keys += [f"tests/{p.name}" for p in named.iterdir()  # as check's glob: no dot files
                 if not p.name.startswith(".") and not p.name.endswith(".out") and p.is_file()
                 and Path(f"{p}.out").is_file()]
    for key in keys:
        if not TEST_NAME.fullmatch(key.removeprefix("tests/")):
            raise SetupError(f"refused test {printable(key)}: a test name holds only letters, digits and -_.")
    groups: dict[str, set[str]] = defaultdict(set)
    python: dict[str, bool] = {}
    for key in keys:
        try:
            python[key], declared = _read_header(iotests / key)
        except OSError as exc:
            raise SetupError(f"cannot read test {iotests / key} ({exc.strerror or exc})") from None
        groups[key].update(declared)
    local = iotests / "group.local"
    if local.is_file():
        _read_group_local(local, keys, groups)
    tests = {k: TestCase(key=k, path=iotests / k, groups=frozenset(groups[k]), python=python[k]) for k in keys}
    return Catalog(iotests=iotests, tests=tests)


def _read_group_local(local: Path, keys: list[str], groups: dict[str, set[str]]) -> None:
    for number, raw in enumerate(local.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, *extra = line.split()
        key = f"{int(name):03}" if re.fullmatch(r"\d+", name) else f"tests/{name}"
        if "/" in name or key not in keys:
            raise SetupError(f"{local}:{number}: unknown test: {printable(name)}")
        groups[key].update(extra)


def reference_output(test: Path, fmt: str, default_machine: str, cachemode: str) -> Path:
    """The reference output check would compare with; it may not exist."""
    candidates = []
    if cachemode == "none":
        candidates.append(Path(f"{test}.out.nocache"))
    candidates += [Path(f"{test}.out.{fmt}"), Path(f"{test}.{default_machine}.out")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return Path(f"{test}.out")
