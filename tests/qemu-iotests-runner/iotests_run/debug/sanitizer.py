"""Sanitizer reports (AddressSanitizer, UndefinedBehaviorSanitizer, LeakSanitizer) read as facts, and the one to
three lines that say what went wrong: the kind of error, where, and for a bad heap access where that memory was
freed and allocated (`heap-use-after-free (READ of size 8) in bdrv_foo (block/io.c:123); freed by thread T0 in
bdrv_delete (block.c:5120); allocated by thread T0 in bdrv_new (block.c:400)`).

Pure functions of the report's text: the runtime writes it (log_path, one file per process), the runner reads it
(debug/sanitizer_reports.py). A report's frames name the sanitizer's interceptors, libc and GLib before the
QEMU function that did it: the frame shown for each stack is its first one in QEMU's own code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# `==1234==ERROR: AddressSanitizer: heap-use-after-free on address 0x... at pc 0x... bp 0x... sp 0x...`;
# with log_exe_name=1 the runtime puts the program's name first: `==qemu-io==1234==ERROR: ...`
PID_PREFIX = r"==(?:[^=\s]+==)?(\d+)=="
ERROR_LINE = re.compile(rf"^{PID_PREFIX}\s*ERROR: (\w+Sanitizer): (.*)$")
# `../util/cutils.c:123:45: runtime error: shift exponent 64 is too large for 64-bit type 'long unsigned int'`
RUNTIME_ERROR = re.compile(r"^(.*?):(\d+)(?::(\d+))?: runtime error: (.*)$")
# `    #3 0x55d0c3a1b2c4 in bdrv_unref ../block.c:7030` (function and location each may be missing)
FRAME = re.compile(r"^\s*#(\d+)\s+0x[0-9a-fA-F]+(?:\s+in\s+(\S+))?(?:\s+(.*?))?\s*$")
# `READ of size 8 at 0x60b000001234 thread T0`
ACCESS = re.compile(r"^(READ|WRITE) of size (\d+) at 0x[0-9a-fA-F]+ thread (T\d+)")
# `freed by thread T0 here:`, `previously allocated by thread T2 (iothread0) here:`
SECTION = re.compile(r"^(freed|previously allocated|allocated) by thread (T\d+)(?: \(([^)]*)\))? here:$")
# `Direct leak of 40 byte(s) in 1 object(s) allocated from:`
LEAK = re.compile(r"^((?:Direct|Indirect) leak of \d+ byte\(s\) in \d+ object\(s\)) allocated from:$")
# `Thread T1 (worker) created by T0 here:`: whose frames say nothing about the error
THREAD_CREATED = re.compile(r"^Thread T\d+ .*created by T\d+ here:$")
# `0x60b000001234 is located 16 bytes inside of 104-byte region [0x...,0x...)`
LOCATED = re.compile(r"^(?:Address )?0x[0-9a-fA-F]+ is located (.*?)(?:\s*\[0x[0-9a-fA-F]+,0x[0-9a-fA-F]+\))?:?$")
SIGNAL_ACCESS = re.compile(r"^The signal is caused by a (\w+) memory access\.")
HINT = re.compile(r"^Hint: (.*?)\.?$")
SUMMARY = re.compile(r"^SUMMARY: (\w+Sanitizer): (.*)$")
ADDRESS = re.compile(r"\baddress (0x[0-9a-fA-F]+)")
END_OF_REPORT = re.compile(rf"^(Shadow bytes around|{PID_PREFIX}ABORTING)")

# Frames that are the machinery, not the code that erred: the sanitizer runtime, the allocator, libc's string
# functions, GLib's allocation wrappers (Debian's libraries have no line information: their frames name the .so).
MACHINERY_FUNCTIONS = frozenset({
    "malloc", "calloc", "realloc", "free", "posix_memalign", "memalign", "aligned_alloc", "valloc", "pvalloc",
    "memcpy", "memmove", "memset", "memcmp", "strlen", "strcpy", "strncpy", "strcmp", "strdup", "strndup",
    "abort", "raise", "__GI_raise", "__GI_abort", "__libc_start_main", "__libc_start_main_impl",
    "__libc_start_call_main", "_start",
})
MACHINERY_PREFIXES = ("__interceptor_", "___interceptor_", "__asan_", "__ubsan_", "__sanitizer_", "__lsan_",
                      "__wrap_", "g_malloc", "g_free", "g_realloc", "g_try_", "g_slice_", "g_new", "g_memdup",
                      "g_strdup")
MAX_FRAMES = 64  # per stack: the first ones are what the explanation needs
MAX_LINE = 400


@dataclass(frozen=True)
class Frame:
    function: str  # "" when the runtime could not name it
    location: str  # "../block/io.c:123", "(/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x5e7a1)", ""

    @property
    def is_machinery(self) -> bool:
        """A frame of the sanitizer runtime, the allocator, libc or another shared library, not QEMU's."""
        return (self.function in MACHINERY_FUNCTIONS or self.function.startswith(MACHINERY_PREFIXES)
                or "libsanitizer" in self.location or "compiler-rt" in self.location
                or bool(re.search(r"\.so(\.\d+)*\+0x", self.location)))

    def describe(self) -> str:
        """`bdrv_unref (block.c:7030)`; the location alone when the function is unknown."""
        where = short_location(self.location)
        if not self.function:
            return where or "an unknown function"
        return f"{self.function} ({where})" if where else self.function


@dataclass(frozen=True)
class Stack:
    title: str  # "" for the error's own stack; "freed by thread T0", "allocated by thread T0", "Direct leak of ..."
    frames: tuple[Frame, ...]

    def first_own(self) -> Frame | None:
        """The first frame in QEMU's own code (the first frame at all when every one is machinery)."""
        own = [f for f in self.frames if not f.is_machinery]
        return own[0] if own else (self.frames[0] if self.frames else None)

    def own_chain(self, count: int) -> str:
        """`bdrv_foo <- bdrv_bar <- ...`: the first count frames of QEMU's own code, innermost first."""
        names = [f.function or short_location(f.location) for f in self.frames if not f.is_machinery]
        return " <- ".join(n for n in names[:count] if n)


@dataclass(frozen=True)
class Report:
    """The first error of one process's sanitizer log."""

    tool: str  # "AddressSanitizer", "UndefinedBehaviorSanitizer", "LeakSanitizer"
    kind: str  # "heap-use-after-free", "SEGV", "runtime error", "detected memory leaks"
    message: str  # UBSan's text; "" otherwise
    address: str  # the bad address of an ASan error, "" when it has none
    access: str  # "READ of size 8", "READ memory access"; ""
    hint: str  # "address points to the zero page"; ""
    location: str  # UBSan: "util/cutils.c:123:45"; the region for ASan ("16 bytes inside of 104-byte region")
    thread: str  # "T0"; ""
    stacks: tuple[Stack, ...]  # the error's own first (title ""), then freed by / allocated by / leaks
    pid: int | None
    summary: str  # the runtime's own SUMMARY line, without "SUMMARY: "

    def stack(self, title_start: str) -> Stack | None:
        return next((s for s in self.stacks if s.title.startswith(title_start)), None)


def short_location(location: str) -> str:
    """`../block/io.c:123` -> `block/io.c:123`; an absolute source path keeps its last two components;
    a library frame `(/lib/.../libc.so.6+0x2a3f)` keeps the library's name, a program's `qemu-img+0x1234`."""
    loc = re.sub(r"\s*\(BuildId: [0-9a-fA-F]+\)$", "", location.strip())
    binary = re.match(r"^\((?:.*/)?([^/]+?)(\+0x[0-9a-fA-F]+)\)$", loc)
    if binary:  # no line information: a library's name; a program's name and offset (for addr2line)
        return binary.group(1) if ".so" in binary.group(1) else binary.group(1) + binary.group(2)
    while loc.startswith("../"):
        loc = loc[3:]
    if loc.startswith("/"):
        loc = "/".join(loc.split("/")[-2:])
    return loc[:MAX_LINE]


def _frame(line: str) -> Frame | None:
    m = FRAME.match(line)
    if not m:
        return None
    return Frame(m.group(2) or "", (m.group(3) or "")[:MAX_LINE])


def _kind(text: str) -> tuple[str, str]:
    """The error's name and its bad address from the ERROR line's text after "Sanitizer: "."""
    address = ADDRESS.search(text)
    kind = re.split(r" on (?:unknown )?(?:address )?0x| at pc 0x| \(pc 0x", text, maxsplit=1)[0]
    kind = re.sub(r"\s*\(thread T\d+\)$", "", kind).rstrip(":").strip()
    return kind[:MAX_LINE], address.group(1) if address else ""


@dataclass
class _Reading:
    """A report as it is read, line by line."""

    tool: str = ""
    kind: str = ""
    message: str = ""
    address: str = ""
    access: str = ""
    hint: str = ""
    location: str = ""
    thread: str = ""
    pid: int | None = None
    summary: str = ""
    title: str | None = ""  # the stack being read; None: a stack that is skipped (a thread's creation)

    def __post_init__(self) -> None:
        self.stacks: list[Stack] = []

    def add_frame(self, frame: Frame) -> None:
        if self.title is None:
            return
        if self.stacks and self.stacks[-1].title == self.title:
            last = self.stacks[-1]
            if len(last.frames) < MAX_FRAMES:
                self.stacks[-1] = Stack(last.title, (*last.frames, frame))
        else:
            self.stacks.append(Stack(self.title, (frame,)))

    def done(self) -> Report:
        return Report(self.tool, self.kind, self.message, self.address, self.access, self.hint, self.location,
                      self.thread, tuple(self.stacks), self.pid, self.summary)


def _start(line: str) -> _Reading | None:
    """A report's first line: an ASan/LSan ERROR line or a UBSan runtime error."""
    m = ERROR_LINE.match(line)
    if m:
        kind, address = _kind(m.group(3))
        return _Reading(tool=m.group(2), kind=kind, address=address, pid=int(m.group(1)))
    m = RUNTIME_ERROR.match(line)
    if m:
        where = short_location(f"{m.group(1)}:{m.group(2)}" + (f":{m.group(3)}" if m.group(3) else ""))
        return _Reading(tool="UndefinedBehaviorSanitizer", kind="runtime error", message=m.group(4)[:MAX_LINE],
                        location=where)
    return None


def _read_line(r: _Reading, line: str) -> bool:
    """Take one line of the report into r; False when the report has ended."""
    stripped = line.strip()
    if END_OF_REPORT.match(stripped):
        return False
    if r.tool == "UndefinedBehaviorSanitizer" and (RUNTIME_ERROR.match(line) or ERROR_LINE.match(line)):
        return False  # the next report: the first one is the one that counts
    summary = SUMMARY.match(stripped)
    if summary:
        r.summary = summary.group(2)[:MAX_LINE]
        return False
    frame = _frame(line) if stripped.startswith("#") else None
    if frame is not None:
        r.add_frame(frame)
        return True
    if not stripped:
        if r.stacks or r.title != "":
            r.title = None  # a blank line ends a stack: frames after it belong to no section until a title
        return True
    _read_fact(r, re.sub(f"^{PID_PREFIX}", "", stripped))
    return True


def _read_fact(r: _Reading, line: str) -> None:
    """A line between stacks: the access, a section's title, where the address lies, the signal's access."""
    if (m := ACCESS.match(line)) is not None:
        r.access, r.thread = f"{m.group(1)} of size {m.group(2)}", m.group(3)
    elif (m := SECTION.match(line)) is not None:
        name = "allocated" if m.group(1) == "previously allocated" else m.group(1)
        r.title = f"{name} by thread {m.group(2)}" + (f" ({m.group(3)})" if m.group(3) else "")
    elif (m := LEAK.match(line)) is not None:
        r.title = m.group(1)
    elif THREAD_CREATED.match(line):
        r.title = None
    elif (m := LOCATED.match(line)) is not None:
        r.location = m.group(1)[:MAX_LINE]
    elif (m := SIGNAL_ACCESS.match(line)) is not None:
        r.access = f"{m.group(1)} memory access"
    elif (m := HINT.match(line)) is not None:
        r.hint = m.group(1)[:MAX_LINE]
    elif r.tool == "LeakSanitizer" and not r.kind:
        r.kind = line[:MAX_LINE]


def parse(text: str) -> Report | None:
    """The first error in a sanitizer log (or in valgrind's: parse_valgrind), or None when it holds only warnings
    (ASan says once per process that it does not fully support swapcontext; that is no error)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        reading = _start(line)
        if reading is None:
            continue
        for following in lines[i + 1:]:
            if not _read_line(reading, following):
                break
        return reading.done()
    return parse_valgrind(text)


# valgrind (memcheck), as check's -valgrind runs it: every line `==PID== ...`; an error's first line says what,
# its stack follows (`at 0x...: fn (file.c:12)`, `by 0x...: fn (in /lib/...so)`), then where the address lies
# and the stacks of the block's free and allocation.
VG_LINE = re.compile(r"^==(\d+)== ?(.*)$")
VG_FRAME = re.compile(r"^\s*(?:at|by) 0x[0-9A-Fa-f]+: (\S+) \((.*)\)$")
VG_ERROR = re.compile(r"^(Invalid (read|write) of size (\d+)|Invalid free\(\) / delete / delete\[\] / realloc\(\)|"
                      r"Mismatched free\(\) / delete / delete \[\]|"
                      r"Conditional jump or move depends on uninitialised value\(s\)|"
                      r"Use of uninitialised value of size \d+|"
                      r"Syscall param .* points to (?:unaddressable|uninitialised) byte\(s\)|"
                      r"Process terminating with default action of signal \d+ \((SIG\w+)\))")
VG_BLOCK = re.compile(r"^Address 0x([0-9A-Fa-f]+) is (.*?) (?:a block of size [\d,]+ )?(free'd|alloc'd)$")
VG_ACCESS = re.compile(r"^(?:Access not within mapped region|Bad permissions for mapped region) at address "
                       r"0x([0-9A-Fa-f]+)")
FREED = "free'd"


def _vg_kind(error: re.Match[str], block: str) -> tuple[str, str]:
    """memcheck's words as ASan's names: an invalid read of a freed block is a heap-use-after-free."""
    if error.group(2):  # Invalid read/write of size N
        access = f"{error.group(2).upper()} of size {error.group(3)}"
        if block == FREED:
            return "heap-use-after-free", access
        return ("heap-buffer-overflow" if block == "alloc'd" else "invalid access"), access
    if error.group(4):
        return error.group(4), ""
    text = error.group(1)
    if text.startswith("Invalid free"):
        return "invalid free", ""
    return text[:MAX_LINE], ""


def _vg_stacks(body: list[str]) -> tuple[list[Stack], str, str, str]:
    """The error's stacks (its own, then `freed by`, `allocated by`), where the address lies, the block's state
    and a signal's faulting address."""
    stacks: list[Stack] = [Stack("", ())]
    location = state = address = ""
    for line in body:
        frame = VG_FRAME.match(line)
        if frame:
            where = frame.group(2)
            loc = f"({where[3:]}+0x0)" if where.startswith("in ") else where
            last = stacks[-1]
            if len(last.frames) < MAX_FRAMES:
                stacks[-1] = Stack(last.title, (*last.frames, Frame(frame.group(1), loc[:MAX_LINE])))
            continue
        stripped = line.strip()
        if (block := VG_BLOCK.match(stripped)) is not None:
            state, address = block.group(3), "0x" + block.group(1)
            location = f"{block.group(2)} {'a freed' if state == FREED else 'an allocated'} block"
            stacks.append(Stack("freed" if state == FREED else "allocated", ()))
        elif stripped.startswith("Block was alloc'd at"):
            stacks.append(Stack("allocated", ()))
        elif (access := VG_ACCESS.match(stripped)) is not None:
            address = "0x" + access.group(1)
    return [s for s in stacks if s.frames or s.title == ""], location, state, address


def parse_valgrind(text: str) -> Report | None:
    """The first memcheck error of a valgrind log (check -valgrind's `$TEST_DIR/PID.valgrind`), as a Report."""
    lines = [(int(m.group(1)), m.group(2)) for m in map(VG_LINE.match, text.splitlines()) if m]
    for i, (pid, line) in enumerate(lines):
        error = VG_ERROR.match(line)
        if error is None:
            continue
        body = []
        for _, following in lines[i + 1:]:
            if not following.strip():
                break
            body.append(following)
        stacks, location, state, address = _vg_stacks(body)
        kind, access = _vg_kind(error, state)
        return Report("Valgrind", kind, "", address, access, "", location, "", tuple(stacks), pid, "")
    return None


def _heap_story(report: Report) -> list[str]:
    """`freed by thread T0 in X`, `allocated by thread T0 in Y`, for the stacks the report has."""
    parts = []
    for title in ("freed", "allocated"):
        stack = report.stack(title)
        frame = stack.first_own() if stack else None
        if stack and frame:
            parts.append(f"{stack.title} in {frame.describe()}")
    return parts


def first_line(report: Report, program: str) -> str:
    """The line that names the error on its own: program, kind, the access, where; where freed and allocated."""
    who = f"{program}: " if program else ""
    own = report.stacks[0].first_own() if report.stacks and report.stacks[0].title == "" else None
    where = f" in {own.describe()}" if own else ""
    if report.kind == "runtime error":
        at = f" at {report.location}" if report.location else ""
        fn = f" in {own.function}" if own and own.function else ""
        return f"{who}undefined behaviour: {report.message}{at}{fn}"
    if report.tool == "LeakSanitizer":
        leak = report.stack("Direct leak") or report.stack("Indirect leak")
        frame = leak.first_own() if leak else None
        first = f": {leak.title} allocated in {frame.describe()}" if leak and frame else ""
        return f"{who}memory leak{first}"
    details = [d for d in (report.access, report.hint) if d]
    if report.address and (report.kind in ("SEGV", "SIGSEGV", "SIGBUS", "stack-overflow")
                           or report.kind.startswith("unknown-crash")):
        details.insert(0, f"address {report.address}")
    detail = f" ({'; '.join(details)})" if details else ""
    return "; ".join([f"{who}{report.kind}{detail}{where}", *_heap_story(report)])


def explain(report: Report, program: str, file: str = "", others: int = 0) -> str:
    """One to three lines: what went wrong (first_line); the memory and the erring stack; where the full
    report is kept."""
    lines = [first_line(report, program)]
    context = []
    if report.location and report.kind != "runtime error":
        context.append(f"address {report.address} is {report.location}" if report.address else report.location)
    chain = report.stacks[0].own_chain(6) if report.stacks and report.stacks[0].title == "" else ""
    if chain:
        context.append(f"stack: {chain}")
    if context:
        lines.append("; ".join(context))
    if file:
        more = f" (and {others} more report{'s' if others != 1 else ''})" if others else ""
        lines.append(f"{report.tool} report: {file}{more}")
    return "\n".join(lines)
