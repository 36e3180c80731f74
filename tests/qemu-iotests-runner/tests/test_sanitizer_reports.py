"""Sanitizer reports read as facts (debug/sanitizer.py) and explained in one to three lines. The report texts are
written here in the runtime's format (gcc 12's libasan/libubsan), not taken from a run."""

from __future__ import annotations

import pytest

from iotests_run.debug import sanitizer
from iotests_run.debug.sanitizer import Frame, explain, first_line, parse, short_location

pytestmark = pytest.mark.unit

SWAPCONTEXT_WARNING = ("==4107==WARNING: ASan doesn't fully support makecontext/swapcontext functions and may produce "
                       "false positives in some cases!\n")

USE_AFTER_FREE = SWAPCONTEXT_WARNING + """=================================================================
==4107==ERROR: AddressSanitizer: heap-use-after-free on address 0x61d000012a88 at pc 0x55f1c0a4be17 bp 0x7ffd5a1c7e20 \
sp 0x7ffd5a1c7e18
READ of size 4 at 0x61d000012a88 thread T0
    #0 0x55f1c0a4be16 in bdrv_drain_poll ../block/io.c:279
    #1 0x55f1c0a4c3a0 in bdrv_do_drained_begin ../block/io.c:380
    #2 0x55f1c0a37b91 in blk_drain ../block/block-backend.c:1822
    #3 0x55f1c0b5a02e in stream_complete_test ../tests/unit/test-bdrv-drain.c:2001
    #4 0x7f5e8e4f1d8f in g_main_context_dispatch (/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x54d8f) (BuildId: 77c5a2b1)

0x61d000012a88 is located 1032 bytes inside of 2144-byte region [0x61d000012680,0x61d000012ee0)
freed by thread T0 here:
    #0 0x7f5e8f2b76a8 in __interceptor_free ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:52
    #1 0x7f5e8e4f9e0c in g_free (/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x5ce0c) (BuildId: 77c5a2b1)
    #2 0x55f1c09e8f41 in bdrv_delete ../block.c:5183
    #3 0x55f1c09ef0a6 in bdrv_unref ../block.c:7063

previously allocated by thread T0 here:
    #0 0x7f5e8f2b7be7 in __interceptor_calloc ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:77
    #1 0x7f5e8e4f9c40 in g_malloc0 (/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x5cc40) (BuildId: 77c5a2b1)
    #2 0x55f1c09e1b22 in bdrv_new ../block.c:404
    #3 0x55f1c09e6d11 in bdrv_open_inherit ../block.c:3801

Thread T2 created by T0 here:
    #0 0x7f5e8f25a726 in __interceptor_pthread_create ../../../../src/libsanitizer/asan/asan_interceptors.cpp:207
    #1 0x55f1c0c0f1d4 in qemu_thread_create ../util/qemu-thread-posix.c:596

SUMMARY: AddressSanitizer: heap-use-after-free ../block/io.c:279 in bdrv_drain_poll
Shadow bytes around the buggy address:
  0x0c3a7fffa500: fd fd fd fd fd fd fd fd fd fd fd fd fd fd fd fd
==4107==ABORTING
"""

SEGV = """AddressSanitizer:DEADLYSIGNAL
=================================================================
==qemu-img==5521==ERROR: AddressSanitizer: SEGV on unknown address 0x000000000018 (pc 0x5600a1b2c3d4 bp 0x7ffc00000000 \
sp 0x7ffc0000fff0 T0)
==qemu-img==5521==The signal is caused by a READ memory access.
==qemu-img==5521==Hint: address points to the zero page.
    #0 0x5600a1b2c3d4 in bdrv_set_backing_hd_drained /root/.cache/iotests-run/bugs-7.2/src/block.c:3412
    #1 0x5600a1b2d000 in bdrv_set_backing_hd /root/.cache/iotests-run/bugs-7.2/src/block.c:3460
    #2 0x5600a1c00000 in stream_prepare ../block/stream.c:79

AddressSanitizer can not provide additional info.
SUMMARY: AddressSanitizer: SEGV /root/.cache/iotests-run/bugs-7.2/src/block.c:3412 in bdrv_set_backing_hd_drained
==qemu-img==5521==ABORTING
"""

DOUBLE_FREE = """==77==ERROR: AddressSanitizer: attempting double-free on 0x602000001230 in thread T0:
    #0 0x7f00 in __interceptor_free ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:52
    #1 0x5600 in qcow2_cache_destroy ../block/qcow2-cache.c:150

0x602000001230 is located 0 bytes inside of 16-byte region [0x602000001230,0x602000001240)
freed by thread T0 here:
    #0 0x7f00 in __interceptor_free ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:52
    #1 0x5600 in qcow2_close ../block/qcow2.c:2790

previously allocated by thread T1 (iothread0) here:
    #0 0x7f00 in __interceptor_malloc ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:69
    #1 0x7f00 in g_malloc (/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x5cb98)
    #2 0x5600 in qcow2_cache_create ../block/qcow2-cache.c:120

SUMMARY: AddressSanitizer: double-free ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:52 in __interceptor_free
==77==ABORTING
"""

UBSAN = """../util/cutils.c:612:21: runtime error: shift exponent 64 is too large for 64-bit type 'long unsigned int'
    #0 0x55d4 in do_strtosz ../util/cutils.c:612
    #1 0x55d5 in qemu_strtosz_MiB ../util/cutils.c:680
    #2 0x55d6 in img_create ../qemu-img.c:555
    #3 0x7f11 in __libc_start_call_main ../sysdeps/nptl/libc_start_call_main.h:58

SUMMARY: UndefinedBehaviorSanitizer: undefined-behavior ../util/cutils.c:612:21 in
"""

LEAK = """
=================================================================
==901==ERROR: LeakSanitizer: detected memory leaks

Direct leak of 40 byte(s) in 1 object(s) allocated from:
    #0 0x7f00 in __interceptor_calloc ../../../../src/libsanitizer/asan/asan_malloc_linux.cpp:77
    #1 0x7f01 in g_malloc0 (/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x5cc40)
    #2 0x5600 in qemu_opts_create ../util/qemu-option.c:637

SUMMARY: AddressSanitizer: 40 byte(s) leaked in 1 allocation(s).
"""


def test_a_use_after_free_names_the_access_the_free_and_the_allocation_in_qemus_own_frames() -> None:
    report = parse(USE_AFTER_FREE)
    assert report is not None
    assert (report.tool, report.kind, report.access, report.pid) == ("AddressSanitizer", "heap-use-after-free",
                                                                     "READ of size 4", 4107)
    assert report.address == "0x61d000012a88"
    assert [s.title for s in report.stacks] == ["", "freed by thread T0", "allocated by thread T0"]  # no T2 creation
    assert first_line(report, "qemu-system-x86_64") == (
        "qemu-system-x86_64: heap-use-after-free (READ of size 4) in bdrv_drain_poll (block/io.c:279); "
        "freed by thread T0 in bdrv_delete (block.c:5183); allocated by thread T0 in bdrv_new (block.c:404)")
    assert report.summary == "heap-use-after-free ../block/io.c:279 in bdrv_drain_poll"


def test_the_explanation_adds_the_region_the_stack_and_where_the_report_is_kept() -> None:
    report = parse(USE_AFTER_FREE)
    assert report is not None
    lines = explain(report, "qemu-io", "runs/qcow2-file/030/sanitizer/qemu-io.4107.txt", others=2).splitlines()
    assert len(lines) == 3
    assert lines[1] == ("address 0x61d000012a88 is 1032 bytes inside of 2144-byte region; "
                        "stack: bdrv_drain_poll <- bdrv_do_drained_begin <- blk_drain <- stream_complete_test")
    assert lines[2] == "AddressSanitizer report: runs/qcow2-file/030/sanitizer/qemu-io.4107.txt (and 2 more reports)"


def test_a_segv_says_the_address_the_access_and_the_hint() -> None:
    report = parse(SEGV)
    assert report is not None
    assert report.kind == "SEGV" and report.pid == 5521
    assert first_line(report, "qemu-img") == (
        "qemu-img: SEGV (address 0x000000000018; READ memory access; address points to the zero page) "
        "in bdrv_set_backing_hd_drained (src/block.c:3412)")


def test_a_double_free_keeps_the_thread_names_of_its_sections() -> None:
    report = parse(DOUBLE_FREE)
    assert report is not None
    assert first_line(report, "") == (
        "attempting double-free in qcow2_cache_destroy (block/qcow2-cache.c:150); freed by thread T0 in "
        "qcow2_close (block/qcow2.c:2790); allocated by thread T1 (iothread0) in qcow2_cache_create "
        "(block/qcow2-cache.c:120)")


def test_undefined_behaviour_names_the_runtime_errors_text_place_and_function() -> None:
    report = parse(UBSAN)
    assert report is not None
    assert report.tool == "UndefinedBehaviorSanitizer" and report.pid is None
    assert first_line(report, "qemu-img") == (
        "qemu-img: undefined behaviour: shift exponent 64 is too large for 64-bit type 'long unsigned int' "
        "at util/cutils.c:612:21 in do_strtosz")
    assert "stack: do_strtosz <- qemu_strtosz_MiB <- img_create" in explain(report, "qemu-img")


def test_only_the_first_of_several_runtime_errors_counts() -> None:
    text = UBSAN + "../block/qcow2.c:10:3: runtime error: load of misaligned address 0x1 for type 'int'\n"
    report = parse(text)
    assert report is not None and report.message.startswith("shift exponent")


def test_a_leak_report_names_the_first_leak_and_where_it_was_allocated() -> None:
    report = parse(LEAK)
    assert report is not None
    assert first_line(report, "qemu-nbd") == (
        "qemu-nbd: memory leak: Direct leak of 40 byte(s) in 1 object(s) allocated in qemu_opts_create "
        "(util/qemu-option.c:637)")


@pytest.mark.parametrize("text", ["", SWAPCONTEXT_WARNING, "hello\n#0 0x1 in main x.c:1\n",
                                  "==1==WARNING: found 1 unrecognized flag(s):\n"])
def test_a_log_with_warnings_only_holds_no_report(text: str) -> None:
    assert parse(text) is None


def test_a_report_cut_short_still_names_what_it_has() -> None:
    cut = USE_AFTER_FREE[:USE_AFTER_FREE.index("previously allocated")]
    report = parse(cut)
    assert report is not None
    assert first_line(report, "qemu-io").endswith("freed by thread T0 in bdrv_delete (block.c:5183)")


def test_every_frame_of_machinery_falls_back_to_the_first() -> None:
    text = ("==3==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x1 at pc 0x2 bp 0x3 sp 0x4\n"
            "WRITE of size 1 at 0x1 thread T0\n"
            "    #0 0x7f in __interceptor_memcpy ../../../../src/libsanitizer/sanitizer_common/x.inc:827\n"
            "    #1 0x7f in ?? (/lib/x86_64-linux-gnu/libc.so.6+0x2a3f)\n")
    report = parse(text)
    assert report is not None
    assert first_line(report, "") == ("heap-buffer-overflow (WRITE of size 1) in __interceptor_memcpy "
                                      "(src/libsanitizer/sanitizer_common/x.inc:827)")


def test_frames_and_locations_are_shortened_for_people() -> None:
    assert short_location("../../block/io.c:12") == "block/io.c:12"
    assert short_location("/root/.cache/iotests-run/qemu-7.2/src/block/io.c:12") == "block/io.c:12"
    assert short_location("(/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x54d8f) (BuildId: 77c5)") == "libglib-2.0.so.0"
    assert Frame("g_free", "(/lib/libglib-2.0.so.0+0x1)").is_machinery
    assert not Frame("bdrv_unref", "../block.c:7063").is_machinery
    assert Frame("", "(/build/qemu-img+0x1234)").describe() == "qemu-img+0x1234"


def test_long_stacks_and_lines_are_bounded() -> None:
    frames = "".join(f"    #{i} 0x55 in f{i} ../x.c:{i}\n" for i in range(500))
    report = parse("==1==ERROR: AddressSanitizer: stack-overflow on address 0x7ff (pc 0x1 bp 0x2 sp 0x3 T0)\n"
                   + frames + "x" * 10_000 + "\n")
    assert report is not None
    assert len(report.stacks[0].frames) == sanitizer.MAX_FRAMES
    assert first_line(report, "qemu-io").startswith("qemu-io: stack-overflow (address 0x7ff) in f0 (x.c:0)")


VALGRIND_USE_AFTER_FREE = """==31337== Memcheck, a memory error detector
==31337== Command: /build/qemu-io -f qcow2 -c read 0 64k /tmp/t.qcow2
==31337==
==31337== Invalid read of size 4
==31337==    at 0x4A1B2C3: bdrv_drain_poll (io.c:279)
==31337==    by 0x4A1B3D4: bdrv_do_drained_begin (io.c:380)
==31337==    by 0x4A0C001: blk_drain (block-backend.c:1822)
==31337==  Address 0x5d2a048 is 1,032 bytes inside a block of size 2,144 free'd
==31337==    at 0x484317B: free (vg_replace_malloc.c:872)
==31337==    by 0x4A0E8F4: g_free (in /usr/lib/x86_64-linux-gnu/libglib-2.0.so.0.7400.6)
==31337==    by 0x4A09F41: bdrv_delete (block.c:5183)
==31337==  Block was alloc'd at
==31337==    at 0x4845A83: calloc (vg_replace_malloc.c:1328)
==31337==    by 0x4A0EC40: g_malloc0 (in /usr/lib/x86_64-linux-gnu/libglib-2.0.so.0.7400.6)
==31337==    by 0x4A01B22: bdrv_new (block.c:404)
==31337==
==31337== Invalid write of size 8
==31337==    at 0x4A1B2FF: bdrv_drain_poll (io.c:281)
"""

VALGRIND_SEGV = """==42== Process terminating with default action of signal 11 (SIGSEGV)
==42==  Access not within mapped region at address 0x18
==42==    at 0x4A55555: bdrv_set_backing_hd_drained (block.c:3412)
==42==    by 0x4A55600: stream_prepare (stream.c:79)
==42==  If you believe this happened as a result of a stack
"""


def test_a_valgrind_use_after_free_reads_as_the_same_explanation_line() -> None:
    report = parse(VALGRIND_USE_AFTER_FREE)
    assert report is not None
    assert (report.tool, report.pid, report.address) == ("Valgrind", 31337, "0x5d2a048")
    assert first_line(report, "qemu-io") == (
        "qemu-io: heap-use-after-free (READ of size 4) in bdrv_drain_poll (io.c:279); freed in bdrv_delete "
        "(block.c:5183); allocated in bdrv_new (block.c:404)")
    assert explain(report, "qemu-io").splitlines()[1] == (
        "address 0x5d2a048 is 1,032 bytes inside a freed block; stack: bdrv_drain_poll <- bdrv_do_drained_begin "
        "<- blk_drain")


def test_a_valgrind_overflow_and_a_fatal_signal_are_named() -> None:
    overflow = parse("==7== Invalid write of size 1\n==7==    at 0x1: qcow2_write (qcow2.c:10)\n"
                     "==7==  Address 0x2 is 0 bytes after a block of size 16 alloc'd\n"
                     "==7==    at 0x3: malloc (vg_replace_malloc.c:1)\n==7==    by 0x4: qcow2_open (qcow2.c:5)\n")
    assert overflow is not None
    assert first_line(overflow, "") == ("heap-buffer-overflow (WRITE of size 1) in qcow2_write (qcow2.c:10); "
                                        "allocated in qcow2_open (qcow2.c:5)")
    segv = parse(VALGRIND_SEGV)
    assert segv is not None
    assert first_line(segv, "qemu-img") == ("qemu-img: SIGSEGV (address 0x18) in bdrv_set_backing_hd_drained "
                                            "(block.c:3412)")


def test_a_clean_valgrind_log_holds_no_report() -> None:
    assert parse("==1== Memcheck, a memory error detector\n==1== HEAP SUMMARY:\n==1==   in use at exit: 0 bytes\n"
                 "==1== ERROR SUMMARY: 0 errors from 0 contexts (suppressed: 0 from 0)\n") is None
