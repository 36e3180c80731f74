"""Sanitizer builds in the runner: detected from the programs, per-run ASAN_OPTIONS/UBSAN_OPTIONS, reports read from
the run's own folder, a report makes the run a crash explained by its first lines and kept in its artifacts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from iotests_run.debug.sanitizer_reports import keep_reports, program_and_pid, read_reports, read_valgrind
from iotests_run.model import Outcome
from iotests_run.plan.history import tree_identity
from iotests_run.run.verdict import Verdict, with_sanitizer
from iotests_run.tree.sanitizers import perturb_fill, sanitizer_environment, sanitizers_of
from support import FakeTree, run_cli

REPORT = """==4107==WARNING: ASan doesn't fully support makecontext/swapcontext functions
==4107==ERROR: AddressSanitizer: heap-use-after-free on address 0x61d000012a88 at pc 0x55 bp 0x7f sp 0x7f
READ of size 4 at 0x61d000012a88 thread T0
    #0 0x55 in bdrv_drain_poll ../block/io.c:279

freed by thread T0 here:
    #0 0x7f in __interceptor_free ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:52
    #1 0x55 in bdrv_delete ../block.c:5183

previously allocated by thread T0 here:
    #0 0x7f in __interceptor_calloc ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:77
    #1 0x55 in bdrv_new ../block.c:404
"""


def _options(value: str) -> list[str]:
    return value.split(":")


@pytest.mark.unit
def test_a_sanitizer_run_logs_into_its_folder_without_leak_checks_and_ends_at_the_first_error() -> None:
    env = sanitizer_environment(("address", "undefined"), Path("/s/1/san/report"), {}, "231")
    asan, ubsan = _options(env["ASAN_OPTIONS"]), _options(env["UBSAN_OPTIONS"])
    assert {"detect_leaks=0", "halt_on_error=1", "abort_on_error=1", "log_path=/s/1/san/report",
            "log_exe_name=1", "allocator_may_return_null=1", "fast_unwind_on_malloc=0"} <= set(asan)
    assert {"print_stacktrace=1", "halt_on_error=1", "log_path=/s/1/san/report"} <= set(ubsan)
    assert "malloc_fill_byte=24" in asan  # 231 ^ 0xff: the byte glibc's MALLOC_PERTURB_ fills new memory with
    assert sanitizer_environment((), Path("/x"), {}, "1") == {}  # a plain build gets nothing
    assert set(sanitizer_environment(("undefined",), Path("/x"), {}, "1")) == {"UBSAN_OPTIONS"}


@pytest.mark.unit
def test_the_users_own_options_win_over_the_defaults_but_not_over_where_reports_go() -> None:
    user = {"ASAN_OPTIONS": "detect_leaks=1,log_path=/tmp/mine verbosity=1", "UBSAN_OPTIONS": "log_to_syslog=1"}
    env = sanitizer_environment(("address", "undefined"), Path("/s/san/report"), user, "0")
    asan = _options(env["ASAN_OPTIONS"])
    assert asan.index("detect_leaks=1") > asan.index("detect_leaks=0")  # later wins
    assert "verbosity=1" in asan and "log_path=/tmp/mine" not in asan and asan[-3] == "log_path=/s/san/report"
    assert "log_to_syslog=1" not in env["UBSAN_OPTIONS"]
    assert not any(o.startswith("malloc_fill_byte") for o in asan)  # MALLOC_PERTURB_=0: no perturbation
    by_hand = sanitizer_environment(("address",), None, {}, "7")
    assert "log_path" not in by_hand["ASAN_OPTIONS"]  # the reproducer: reports on stderr


@pytest.mark.unit
@pytest.mark.parametrize(("perturb", "fill"), [("231", ["malloc_fill_byte=24"]), ("255", ["malloc_fill_byte=0"]),
                                               ("0", []), ("x", []), ("1", ["malloc_fill_byte=254"])])
def test_malloc_perturb_becomes_asans_fill_of_new_memory(perturb: str, fill: list[str]) -> None:
    assert perturb_fill(perturb) == fill


@pytest.mark.unit
def test_a_file_that_is_no_program_is_no_sanitizer_build(tmp_path: Path) -> None:
    script = tmp_path / "qemu-img"
    script.write_text("#!/bin/sh\nexit 0\n")
    assert sanitizers_of(script) == ()
    assert sanitizers_of(tmp_path / "missing") == ()
    truncated = tmp_path / "cut"
    truncated.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x03\0>\0" + b"\xff" * 40)
    assert sanitizers_of(truncated) == ()


def _compile(tmp_path: Path, name: str, source: str, *flags: str) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    (tmp_path / f"{name}.c").write_text(source)
    done = subprocess.run([cc, *flags, "-g", "-o", str(tmp_path / name), str(tmp_path / f"{name}.c")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot build with {flags}: {done.stderr[-300:]}")
    return tmp_path / name


@pytest.mark.process
def test_programs_built_with_asan_and_ubsan_are_told_from_plain_ones(tmp_path: Path) -> None:
    source = "int main(int argc, char **argv) { return argv[argc - 1][0] << argc; }\n"
    assert sanitizers_of(_compile(tmp_path, "both", source, "-fsanitize=address,undefined")) == ("address",
                                                                                                "undefined")
    assert sanitizers_of(_compile(tmp_path, "asan", source, "-fsanitize=address")) == ("address",)
    assert sanitizers_of(_compile(tmp_path, "plain", source)) == ()


@pytest.mark.unit
def test_a_report_makes_any_run_a_crash_but_an_interrupted_one() -> None:
    cause = "AddressSanitizer report from qemu-io (pid 7)"
    assert with_sanitizer(Verdict(Outcome.PASS, ""), cause) == Verdict(Outcome.CRASH, cause)
    failed = with_sanitizer(Verdict(Outcome.FAIL, "failed, exit status 1", "diff"), cause)
    assert failed == Verdict(Outcome.CRASH, f"{cause}; then fail: failed, exit status 1", "diff")
    assert with_sanitizer(Verdict(Outcome.HANG, "no CPU for 30 s"), cause).outcome is Outcome.CRASH
    assert with_sanitizer(Verdict(Outcome.INTERRUPTED, "x"), cause).outcome is Outcome.INTERRUPTED
    assert with_sanitizer(Verdict(Outcome.FAIL, "x"), "").outcome is Outcome.FAIL


@pytest.mark.unit
def test_logs_are_read_oldest_first_warnings_skipped_links_not_followed(tmp_path: Path) -> None:
    san = tmp_path / "san"
    san.mkdir()
    (san / "report.qemu-img.10").write_text("==10==WARNING: ASan doesn't fully support swapcontext\n")
    (san / "report.qemu-io.11").write_text(REPORT)
    (san / "report.qemu-nbd.12").write_text(REPORT.replace("bdrv_drain_poll", "nbd_read"))
    (san / "report.qemu-system-x86_64.13").symlink_to(san / "report.qemu-io.11")
    found = read_reports(san)
    assert [(f.program, f.pid) for f in found] == [("qemu-io", "11"), ("qemu-nbd", "12")]
    assert read_reports(tmp_path / "absent") == []
    assert program_and_pid("report.qemu-system-x86_64.4107") == ("qemu-system-x86_64", "4107")
    assert program_and_pid("odd") == ("", "")


VALGRIND_LOG = """==31337== Memcheck, a memory error detector
==31337== Command: /build/qemu-system-x86_64 -display none -qmp unix:/tmp/q.sock
==31337==
==31337== Invalid read of size 8
==31337==    at 0x4A1B2C3: bdrv_drain_poll (io.c:279)
==31337==    by 0x4A1B3D4: bdrv_do_drained_begin (io.c:380)
==31337==  Address 0x5d2a048 is 8 bytes inside a block of size 2,144 free'd
==31337==    at 0x484317B: free (vg_replace_malloc.c:872)
==31337==    by 0x4A09F41: bdrv_delete (block.c:5183)
==31337==
==31337== ERROR SUMMARY: 1 errors from 1 contexts (suppressed: 0 from 0)
"""


@pytest.mark.unit
def test_valgrind_logs_left_in_test_dir_are_read_with_their_program(tmp_path: Path) -> None:
    """A Python test's VM keeps the PID.valgrind log of a QEMU valgrind failed; clean logs, other files and links
    are no report."""
    test_dir = tmp_path / "t"
    test_dir.mkdir()
    (test_dir / "31337.valgrind").write_text(VALGRIND_LOG)
    (test_dir / "40.valgrind").write_text("==40== ERROR SUMMARY: 0 errors from 0 contexts\n")
    (test_dir / "t.qcow2").write_text(VALGRIND_LOG)  # an image, not a log
    (test_dir / "41.valgrind").symlink_to(test_dir / "31337.valgrind")
    output = tmp_path / "t.out.bad"
    output.write_text("==9== Invalid read of size 1\n")  # the files come first
    found = read_valgrind(test_dir, output)
    assert [(f.name, f.program, f.pid) for f in found] == [("31337.valgrind", "qemu-system-x86_64", "31337")]
    evidence, attached = keep_reports(found, tmp_path / "run" / "valgrind", "runs/r/valgrind")
    assert attached == ["runs/r/valgrind/qemu-system-x86_64.31337.txt"]
    assert evidence.explanation.splitlines()[0] == (
        "qemu-system-x86_64: heap-use-after-free (READ of size 8) in bdrv_drain_poll (io.c:279); freed in "
        "bdrv_delete (block.c:5183)")
    assert evidence.summary.startswith("1 valgrind report: ")


@pytest.mark.unit
def test_a_valgrind_log_a_bash_test_printed_is_read_from_its_output(tmp_path: Path) -> None:
    """common.rc prints the log on valgrind's exit status 99 and removes the file: the output's lines of the first
    process with an error make the report, the test's own lines and other processes' left out."""
    output = tmp_path / "t.out.bad"
    other = "==12== Memcheck, a memory error detector\n==12== ERROR SUMMARY: 0 errors\n"
    output.write_text("QA output created by 999\n" + other + VALGRIND_LOG + "read 65536/65536 bytes\n")
    (found,) = read_valgrind(tmp_path / "absent", output)
    assert (found.program, found.pid) == ("qemu-system-x86_64", "31337")
    assert found.text == VALGRIND_LOG.rstrip("\n")
    output.write_text("QA output created by 999\n" + other)
    assert read_valgrind(tmp_path / "absent", output) == []
    assert read_valgrind(tmp_path / "absent", tmp_path / "none") == []


@pytest.mark.unit
def test_kept_reports_are_attached_and_the_first_explains_the_run(tmp_path: Path) -> None:
    san = tmp_path / "san"
    san.mkdir()
    (san / "report.qemu-io.11").write_text(REPORT)
    (san / "report.qemu-io.12").write_text(REPORT)
    evidence, attached = keep_reports(read_reports(san), tmp_path / "run" / "sanitizer", "runs/r/sanitizer")
    assert attached == ["runs/r/sanitizer/qemu-io.11.txt", "runs/r/sanitizer/qemu-io.12.txt"]
    assert (tmp_path / "run" / "sanitizer" / "qemu-io.11.txt").read_text() == REPORT
    first, *rest = evidence.explanation.splitlines()
    assert first == ("qemu-io: heap-use-after-free (READ of size 4) in bdrv_drain_poll (block/io.c:279); "
                     "freed by thread T0 in bdrv_delete (block.c:5183); allocated by thread T0 in bdrv_new "
                     "(block.c:404)")
    assert rest[-1] == "AddressSanitizer report: runs/r/sanitizer/qemu-io.11.txt (and 1 more report)"
    assert evidence.cause == "AddressSanitizer report from qemu-io (pid 11)"


@pytest.mark.unit
def test_reports_that_cannot_be_kept_still_explain_the_run(tmp_path: Path) -> None:
    san = tmp_path / "san"
    san.mkdir()
    (san / "report.qemu-io.11").write_text(REPORT)
    (tmp_path / "file").write_text("")
    evidence, attached = keep_reports(read_reports(san), tmp_path / "file" / "sanitizer", "r")
    assert attached == [] and "sanitizer reports not kept" in evidence.summary
    assert evidence.explanation.startswith("qemu-io: heap-use-after-free")


USE_AFTER_FREE_C = r"""
#include <stdlib.h>
#include <string.h>
struct node { int refcnt; char name[60]; };
static struct node *node_new(void) { return calloc(1, sizeof(struct node)); }
static void node_unref(struct node *n) { free(n); }
static int node_drain(struct node *n) { return n->refcnt; }
int main(int argc, char **argv) {
    struct node *n = node_new();
    if (argc > 1 && strcmp(argv[1], "bug") == 0) {
        node_unref(n);
        return node_drain(n);
    }
    return 0;
}
"""


@pytest.mark.process
def test_a_real_asan_report_in_a_fake_tree_makes_the_run_a_crash_explained_by_it(fake_tree: FakeTree,
                                                                                   tmp_path: Path) -> None:
    """qemu-io of the fake tree is a real ASan program with a use-after-free: gcc's runtime writes the report."""
    program = _compile(tmp_path, "qemu-io", USE_AFTER_FREE_C, "-fsanitize=address,undefined", "-O0")
    shutil.copy(program, fake_tree.build / "qemu-io")
    shutil.copy(program, fake_tree.build / "qemu-img")
    fake_tree.add_test("001", 'echo start; "$QEMU_IO_PROG"; echo "clean $?"\n', out="start\nclean 0\n")
    fake_tree.add_test("002", 'echo start; "$QEMU_IO_PROG" bug; echo "done"\n', out="start\ndone\n")
    results = tmp_path / "r"
    done = run_cli([*fake_tree.args(results), "-f", "qcow2", "001", "002"])
    data = json.loads((results / "results.json").read_text())
    runs = {r["test"]: r for r in data["runs"]}
    assert runs["001"]["outcome"] == "pass", done.stdout + done.stderr
    crash = runs["002"]
    assert crash["outcome"] == "crash", crash
    first = crash["explanation"].splitlines()[0]
    assert re.fullmatch(r"qemu-io: heap-use-after-free \(READ of size 4\) in node_drain \(\S*qemu-io\.c:7\); "
                        r"freed by thread T0 in node_unref \(\S*qemu-io\.c:6\); "
                        r"allocated by thread T0 in node_new \(\S*qemu-io\.c:5\)", first), first
    assert crash["reason"].startswith(first)
    kept = [a for a in crash["attachments"] if "/sanitizer/" in a]
    assert len(kept) == 1 and "ERROR: AddressSanitizer: heap-use-after-free" in (results / kept[0]).read_text()
    assert "(address+undefined sanitizers)" in data["history_tree"]  # durations of their own
    reproducer = (results / crash["artifacts"] / "reproduce.sh").read_text()
    assert "ASAN_OPTIONS=" in reproducer and "log_path" not in reproducer


@pytest.mark.unit
def test_a_sanitizer_build_keeps_its_own_durations() -> None:
    plain = tree_identity("7.2.0", ["001", "002"])
    assert plain == tree_identity("7.2.0", ["002", "001"], ())
    sanitized = tree_identity("7.2.0", ["001", "002"], ("undefined", "address"))
    assert sanitized != plain and sanitized.startswith("QEMU 7.2.0 (address+undefined sanitizers) tests:")
