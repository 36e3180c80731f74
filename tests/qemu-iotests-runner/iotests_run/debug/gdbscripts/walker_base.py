"""The walker's reading of gdb values (bounded lists, fields, strings, enums), the coroutine unwinder
(jmp_buf registers, pointer guard undone) and `Coroutines`, frames as dicts. Runs inside gdb (block_state.py)."""

from __future__ import annotations

from typing import Any

import gdb
from gdb.unwinder import Unwinder, register_unwinder

MAX_NODES = 1000
MAX_LIST = 10_000  # links followed in any one list (a corrupt list must not loop forever)
MAX_REQUESTS = 50  # per node
MAX_UNWINDS = 200  # coroutine backtraces in all
MAX_FRAMES = 30
MASK = (1 << 64) - 1
# sigjmp_buf's __jmpbuf on x86_64 glibc: rbx, rbp, r12, r13, r14, r15, rsp, pc
JMPBUF_REGISTERS = ("rbx", "rbp", "r12", "r13", "r14", "r15", "rsp", "rip")
MANGLED = {"rbp", "rsp", "rip"}
# Frames that only say "this coroutine yielded".
SWITCH_FRAMES = {"qemu_coroutine_switch", "qemu_coroutine_yield"}


def _fields(value: Any) -> set[str]:
    try:
        return {f.name for f in value.type.strip_typedefs().fields()}
    except (gdb.error, TypeError, AttributeError):  # AttributeError: None, a symbol this build lacks
        return set()


def _int(value: Any) -> int | None:
    """An integer field, also through QEMU's wrappers (a struct with one member, e.g. an atomic)."""
    try:
        if value.type.strip_typedefs().code == gdb.TYPE_CODE_STRUCT:
            first = value.type.strip_typedefs().fields()[0].name
            return _int(value[first])
        return int(value)
    except (gdb.error, IndexError, TypeError, ValueError, AttributeError):
        return None


def _get(value: Any, *names: str) -> Any:
    """The first of these fields the type has (names change between QEMU versions), else None."""
    have = _fields(value)
    for name in names:
        if name in have:
            return value[name]
    return None


def _string(value: Any, limit: int = 4096) -> str | None:
    try:
        if value is None or (value.type.strip_typedefs().code == gdb.TYPE_CODE_PTR and int(value) == 0):
            return None
        return str(value.string(errors="replace"))[:limit]  # up to its NUL (an array's too)
    except (gdb.error, UnicodeDecodeError):
        return None


def _addr(value: Any) -> str | None:
    try:
        return None if value is None or int(value) == 0 else hex(int(value))
    except gdb.error:
        return None


def _items(head: Any, link: str) -> list[Any]:
    """The elements of a QLIST, QTAILQ or QSIMPLEQ whose link field is `link`, bounded, loops cut."""
    first = _get(head, "lh_first", "tqh_first", "sqh_first")
    out: list[Any] = []
    seen: set[int] = set()
    element = first
    while element is not None and int(element) != 0 and len(out) < MAX_LIST and int(element) not in seen:
        seen.add(int(element))
        out.append(element)
        entry = element.dereference()[link]
        element = _get(entry, "le_next", "tqe_next", "sqe_next")
    return out


def _static(name: str) -> Any:
    symbol = gdb.lookup_static_symbol(name) or gdb.lookup_global_symbol(name)
    if symbol is None:
        try:
            return gdb.parse_and_eval(name)
        except gdb.error:
            return None
    return symbol.value()


def _enum(value: Any) -> str | None:
    try:
        return str(value)
    except gdb.error:
        return None


# Coroutine backtraces ------------------------------------------------------------------------------

class _FrameId:
    def __init__(self, sp: int, pc: int) -> None:
        word = gdb.lookup_type("unsigned long")
        self.sp = gdb.Value(sp).cast(word)
        self.pc = gdb.Value(pc).cast(word)


class _CoroutineUnwinder(Unwinder):
    """While `registers` is set, the thread's innermost real frame (`level`: gdb's inline-frame unwinder answers
    for inlined frames before any Python unwinder is asked) seems to have been called by that coroutine."""

    def __init__(self) -> None:
        super().__init__("iotests-run coroutine")
        self.registers: dict[str, int] | None = None
        self.level = 0

    def __call__(self, pending_frame: gdb.PendingFrame) -> gdb.UnwindInfo | None:
        pending = pending_frame
        if self.registers is None or pending.level() != self.level:
            return None
        regs = self.registers
        info = pending.create_unwind_info(_FrameId(regs["rsp"] - 256, regs["rip"]))
        word = gdb.lookup_type("unsigned long")
        for name, value in regs.items():
            info.add_saved_register(name, gdb.Value(value).cast(word))
        return info


_UNWINDER = _CoroutineUnwinder()
register_unwinder(None, _UNWINDER, replace=True)


def _ror(value: int, bits: int) -> int:
    return ((value >> bits) | (value << (64 - bits))) & MASK


class Coroutines:
    def __init__(self) -> None:
        self.unwinds = 0
        self.cache: dict[int, list[dict[str, Any]]] = {}
        try:
            fs_base = int(gdb.parse_and_eval("$fs_base"))
            self.guard: int | None = int(gdb.parse_and_eval(f"*(unsigned long *){fs_base + 0x30}")) & MASK
        except gdb.error:
            self.guard = None
        self.context: gdb.Type | None
        try:
            self.context = gdb.lookup_type("CoroutineUContext").pointer()
        except gdb.error:
            self.context = None
        self.running = _running_coroutines()

    def backtrace(self, co: Any) -> list[dict[str, Any]]:
        """Where a parked coroutine is: its frames from the switch that parked it outwards. A coroutine that
        is some thread's current one is running: its jmp_buf is stale, its frames are that thread's."""
        address = int(co)
        if address in self.cache:
            return self.cache[address]
        if address in self.running:
            self.cache[address] = _running_backtrace(self.running[address])
            return self.cache[address]
        if self.guard is None or self.context is None or self.unwinds >= MAX_UNWINDS:
            return []
        self.unwinds += 1
        frames: list[dict[str, Any]] = []
        try:
            buf = co.cast(self.context).dereference()["env"][0]["__jmpbuf"]
            raw = [int(buf[i]) & MASK for i in range(len(JMPBUF_REGISTERS))]
            _UNWINDER.registers = {name: (_ror(v, 0x11) ^ self.guard if name in MANGLED else v)
                                   for name, v in zip(JMPBUF_REGISTERS, raw, strict=True)}
            _UNWINDER.level = _first_real_level()
            gdb.invalidate_cached_frames()
            frame = _frame_at(_UNWINDER.level).older()
            if frame is None or frame.pc() != _UNWINDER.registers["rip"]:
                # gdb did not take the coroutine's registers: what follows would be the thread's own frames
                raise gdb.error("gdb did not unwind from the coroutine's saved registers")
            _walk_to_trampoline(frame, frames)
        except gdb.error as exc:
            frames.append({"error": str(exc)})
        finally:
            _UNWINDER.registers = None
            _UNWINDER.level = 0
            gdb.invalidate_cached_frames()
        self.cache[address] = frames
        return frames


def _first_real_level() -> int:
    """The level of the selected thread's innermost frame that is not inlined into its caller."""
    frame: gdb.Frame | None = gdb.newest_frame()
    while frame is not None and frame.type() == gdb.INLINE_FRAME:
        frame = frame.older()
    return frame.level() if frame is not None else 0


def _frame_at(level: int) -> Any:
    frame = gdb.newest_frame()
    while frame.level() < level:
        older = frame.older()
        if older is None:
            break
        frame = older
    return frame


def _current_coroutine() -> int:
    """The selected thread's current coroutine, 0 when it runs none (its own stack, the "leader", counts as none)."""
    try:
        current = int(gdb.parse_and_eval("co_tls_current"))
    except gdb.error:
        return 0
    try:
        leader = int(gdb.parse_and_eval("&co_tls_leader"))
    except gdb.error:
        leader = 0
    return current if current != leader else 0


def _running_coroutines() -> dict[int, int]:
    """Each thread's current coroutine (address -> thread number): running, not parked."""
    out: dict[int, int] = {}
    selected = gdb.selected_thread()
    try:
        for thread in gdb.selected_inferior().threads():
            try:
                thread.switch()
                current = _current_coroutine()
            except gdb.error:
                continue
            if current:
                out[current] = thread.num
    finally:
        if selected is not None and selected.is_valid():
            selected.switch()
    return out


def _running_backtrace(num: int) -> list[dict[str, Any]]:
    """A running coroutine's frames, unwound from its thread's live registers, up to its trampoline; the
    first frame says on which thread it runs."""
    frames: list[dict[str, Any]] = []
    selected = gdb.selected_thread()
    try:
        thread = next((t for t in gdb.selected_inferior().threads() if t.num == num), None)
        if thread is None:
            return [{"error": f"thread {num} is gone"}]
        thread.switch()
        _walk_to_trampoline(gdb.newest_frame(), frames)
    except gdb.error as exc:
        frames.append({"error": str(exc)})
    finally:
        if selected is not None and selected.is_valid():
            selected.switch()
    if frames and "error" not in frames[0]:
        frames[0]["running_on_thread"] = num
    return frames


def _walk_to_trampoline(frame: gdb.Frame | None, frames: list[dict[str, Any]]) -> None:
    """A coroutine's frames from frame outwards, appended to frames up to its coroutine_trampoline (MAX_FRAMES in
    all); a gdb.error propagates with the frames read before it kept."""
    while frame is not None and len(frames) < MAX_FRAMES:
        frames.append(_frame(frame))
        if frame.name() == "coroutine_trampoline":
            break
        frame = frame.older()


def _frame(frame: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"function": frame.name(), "pc": hex(frame.pc())}
    try:
        sal = frame.find_sal()
        if sal.symtab is not None:
            out["file"], out["line"] = sal.symtab.filename, sal.line
    except gdb.error:
        pass
    return out


# The graph --------------------------------------------------------------------------------------
