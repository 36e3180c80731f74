"""debug/diagnostics.py: cores checked before gdb reads them."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest

from iotests_run.debug.cores import check_core
from iotests_run.errors import UsageError
from iotests_run.inputs import read_head
from support import GOOD_SEGMENTS, elf


@pytest.mark.unit
@pytest.mark.parametrize("kind", [{}, {"cls": 1, "order": ">"}, {"xnum": True}])
def test_a_whole_core_passes_the_check(tmp_path: Path, kind: dict[str, Any]) -> None:
    core = tmp_path / "core"
    core.write_bytes(elf(GOOD_SEGMENTS, **kind))
    check_core(core, "--core")


@pytest.mark.unit
def test_cores_that_are_not_or_are_cut_short_are_refused(tmp_path: Path) -> None:
    cases = {
        b"": "is not a core file (empty)",
        b"core dumped\n": "is not a core file (not ELF)",
        gzip.compress(elf(GOOD_SEGMENTS)): "is gzip-compressed; gunzip it first",
        elf(GOOD_SEGMENTS, e_type=2): "is an executable, not a core",
        elf(GOOD_SEGMENTS, e_type=3): "is a shared object or PIE executable, not a core",
        elf(GOOD_SEGMENTS)[:40]: "is truncated (within its ELF header)",
        elf(GOOD_SEGMENTS)[:100]: "is truncated (100 bytes; its program headers end at byte 232)",
        elf(GOOD_SEGMENTS, size=0x4000): "is truncated (16384 bytes; its segments need 20480)",
        elf([(4, 0x1000, 0x10)]): "has no memory segments",
        elf([]): "has no program headers",
        elf(GOOD_SEGMENTS, xnum=True, size=0x4000): "is truncated",
        b"\x7fELF\x09\x01" + bytes(60): "unknown class or byte order",
    }
    for n, (data, needle) in enumerate(cases.items()):
        core = tmp_path / f"core{n}"
        core.write_bytes(data)
        with pytest.raises(UsageError, match=r"^--core: ") as caught:
            check_core(core, "--core")
        assert needle in str(caught.value), (needle, str(caught.value))


@pytest.mark.unit
def test_only_the_head_of_a_big_core_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GB that takes no room
    head, size = read_head(big, "--core", 4096)
    assert len(head) == 4096 and size == 1 << 30
