"""Sanitizer builds: whether a QEMU build is one, and the sanitizer options each of its runs gets.

A build is a sanitizer build when its programs name the AddressSanitizer or UndefinedBehaviorSanitizer runtime in
their ELF dynamic string table (gcc links libasan/libubsan and imports `__asan_*`/`__ubsan_handle_*`; clang's static
runtimes export them): the same answer whatever made the build (QEMU's configure, meson's b_sanitize, CFLAGS), read
from a few kilobytes of one program, never by running it.

The options (sanitizer_environment) are those a test run needs: each process's report in a file of the run's own
folder (log_path), so that it is kept with the run's artifacts and never mixed into the output the test is judged
by; leak detection off (QEMU's programs exit without freeing everything, as QEMU's own check has it); the first
error ends the process (halt_on_error, and abort_on_error so that it dies of SIGABRT, a crash any test notices);
UBSan's reports with their stack; a too large allocation returns NULL, as without ASan (QEMU asks g_try_malloc for
image- and guest-controlled sizes and handles NULL; iotests check that it does); the stacks of every allocation and
free unwound from DWARF, not frame pointers (fast_unwind_on_malloc=0): Debian's GLib has no frame pointers, so the
fast unwinder stops in g_malloc0 and a use-after-free's report could not say which QEMU function allocated the
memory, the heart of its explanation. It costs CPU on every allocation (measured: see the README).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

from iotests_run.errors import UsageError
from iotests_run.inputs import read_at, read_head

ASAN, UBSAN = "address", "undefined"
HEAD_BYTES = 64 << 10  # the ELF header and the program headers
DYNAMIC_BYTES = 64 << 10
STRTAB_BYTES = 16 << 20
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_STRTAB, DT_STRSZ = 0, 5, 10
# Per ELF class: where e_phoff, e_phentsize, e_phnum lie; a program header; which fields are type, offset,
# vaddr, filesz; one dynamic entry.
_LAYOUT = {
    1: ((28, "I"), 42, 44, "IIIIIIII", (0, 1, 2, 4), "iI"),
    2: ((32, "Q"), 54, 56, "IIQQQQQQ", (0, 2, 3, 5), "qQ"),
}
# Options whose values are the runner's whatever the user's ASAN_OPTIONS say: where reports go.
LOG_OPTIONS = ("log_path", "log_exe_name", "log_to_syslog")


def _segments(path: Path) -> tuple[str, str, list[tuple[int, int, int, int]]]:
    """Byte order, dynamic-entry format and every program header (type, offset, vaddr, filesz)."""
    head, _ = read_head(path, "program", HEAD_BYTES)
    if head[:4] != b"\x7fELF" or len(head) < 64 or head[4] not in _LAYOUT or head[5] not in (1, 2):
        return "<", "", []
    order = "<" if head[5] == 1 else ">"
    (phoff_at, phoff_fmt), phentsize_at, phnum_at, phdr, picks, dyn = _LAYOUT[head[4]]
    phoff = struct.unpack_from(order + phoff_fmt, head, phoff_at)[0]
    phentsize = struct.unpack_from(order + "H", head, phentsize_at)[0]
    phnum = struct.unpack_from(order + "H", head, phnum_at)[0]
    size = struct.calcsize(order + phdr)
    headers = []
    for i in range(phnum):
        at = phoff + i * phentsize
        if phentsize < size or at + size > len(head):
            break
        entry = struct.unpack_from(order + phdr, head, at)
        headers.append(tuple(int(entry[k]) for k in picks))
    return order, order + dyn, [(h[0], h[1], h[2], h[3]) for h in headers]


def _file_offset(address: int, segments: list[tuple[int, int, int, int]]) -> int | None:
    """Where a loaded address lies in the file (through the PT_LOAD segment that maps it)."""
    for kind, offset, vaddr, filesz in segments:
        if kind == PT_LOAD and vaddr <= address < vaddr + filesz:
            return offset + address - vaddr
    return None


def dynamic_strings(path: Path) -> bytes:
    """The program's dynamic string table (the names of the libraries and symbols it links), b"" when it has none."""
    _, dyn, segments = _segments(path)
    dynamic = next(((offset, filesz) for kind, offset, _, filesz in segments if kind == PT_DYNAMIC), None)
    if not dyn or dynamic is None:
        return b""
    table = read_at(path, "program", dynamic[0], min(dynamic[1], DYNAMIC_BYTES))
    entry = struct.calcsize(dyn)
    values: dict[int, int] = {}
    for at in range(0, len(table) - entry + 1, entry):
        tag, value = struct.unpack_from(dyn, table, at)
        if tag == DT_NULL:
            break
        values.setdefault(int(tag), int(value))
    start = _file_offset(values.get(DT_STRTAB, -1), segments)
    if start is None:
        return b""
    return read_at(path, "program", start, min(values.get(DT_STRSZ, 0), STRTAB_BYTES))


def sanitizers_of(program: Path) -> tuple[str, ...]:
    """The sanitizers a program was built with ("address", "undefined"); () for a plain build or no ELF program."""
    try:
        strings = dynamic_strings(program)
    except (UsageError, struct.error):
        return ()
    found = []
    if b"__asan_init" in strings or b"libasan.so" in strings:
        found.append(ASAN)
    if b"__ubsan_handle_" in strings or b"libubsan.so" in strings:
        found.append(UBSAN)
    return tuple(found)


def _options(ours: list[str], user: str | None, forced: list[str]) -> str:
    """ours, then the user's own (a later option wins: theirs win over our defaults), then what must be ours.
    Options are separated by ':' (the runtimes also split on spaces and commas, which a user's string may use)."""
    users = [o for o in (user or "").replace(",", ":").replace(" ", ":").split(":")
             if o and o.split("=", 1)[0] not in LOG_OPTIONS]
    return ":".join([*ours, *users, *forced])


def perturb_fill(malloc_perturb: str) -> list[str]:
    """ASan's allocator in place of glibc's MALLOC_PERTURB_ (which ASan's malloc never reads): new memory filled
    with the byte glibc would use (perturb ^ 0xff); MALLOC_PERTURB_=0 or unset leaves ASan's own fill. Freed memory
    needs no fill: any access to it is reported."""
    try:
        value = int(malloc_perturb)
    except ValueError:
        return []
    return [f"malloc_fill_byte={(value & 0xFF) ^ 0xFF}"] if value & 0xFF else []


def sanitizer_environment(sanitizers: tuple[str, ...], log_prefix: Path | None, user_env: Mapping[str, str],
                          malloc_perturb: str) -> dict[str, str]:
    """ASAN_OPTIONS and UBSAN_OPTIONS for one run of a sanitizer build ({} for a plain build).

    log_prefix: each process writes its report to PREFIX.PROGRAM.PID (None: to stderr, for a reproducer run by
    hand). The user's own ASAN_OPTIONS/UBSAN_OPTIONS are kept and win over these defaults (detect_leaks=1 to hunt
    leaks, say), except log_path, log_exe_name and log_to_syslog: reports always go where the runner reads them."""
    if not sanitizers:
        return {}
    forced = [f"log_path={log_prefix}", "log_exe_name=1", "log_to_syslog=0"] if log_prefix is not None else []
    fatal = ["halt_on_error=1", "abort_on_error=1"]
    env = {}
    if ASAN in sanitizers:
        env["ASAN_OPTIONS"] = _options(["detect_leaks=0", *fatal, "allocator_may_return_null=1",
                                        "fast_unwind_on_malloc=0", *perturb_fill(malloc_perturb)],
                                       user_env.get("ASAN_OPTIONS"), forced)
    if UBSAN in sanitizers:
        env["UBSAN_OPTIONS"] = _options([*fatal, "print_stacktrace=1", "report_error_type=1"],
                                        user_env.get("UBSAN_OPTIONS"), forced)
    return env
