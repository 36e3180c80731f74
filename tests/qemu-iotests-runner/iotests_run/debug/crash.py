"""Why a QEMU process crashed, in one to three lines, from the walker's "crash" facts (pure functions).

The facts (gdbscripts/block_state.py, `crash_facts`) are the signal and its faulting address, the
failed assertion's text, the crashing thread's first frames of QEMU's own code (libc's and glib's
abort plumbing left out) and, for each, its pointer arguments of a type the block graph knows
(node, child, backend, job, AioContext) checked against the live lists: live (and named), or not,
and then whether the memory holds the MALLOC_PERTURB_ byte glibc fills freed memory with.

The first line names the cause on its own, as a block-layer developer would say it:
  SIGSEGV in bdrv_set_backing_hd: backing_hd=0x5555... is not a live node (freed: holds the 0xe7 fill of
  MALLOC_PERTURB_=231)
  assertion failed in mirror_run: "!job->in_flight" (block/mirror.c:123)
  &error_abort in bdrv_attach_child_common: "Conflicts with use by ..." (block.c:2900)
the second where (the program, QEMU's frames), the third what else the pointers say.
Documents may be hand-made or damaged: every field is checked, nothing raises.
"""

from __future__ import annotations

from typing import Any

from iotests_run.text import printable

KIND_WORDS = {"node": "node", "child": "BdrvChild", "backend": "backend", "job": "job", "context": "AioContext"}
MAX_LINE = 400
MAX_CHAIN = 5
PAGE = 4096  # a fault below this is a NULL pointer's field


def _text(value: Any, limit: int = 200) -> str:
    return printable(str(value))[:limit] if value is not None else "?"


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _where(frame: dict[str, Any]) -> str:
    """ (file:line) of a frame, when known."""
    file, line = frame.get("file"), frame.get("line")
    return f" ({_text(file)}:{_text(line)})" if isinstance(file, str) and file else ""


def _fill_words(pointer: dict[str, Any], fill: Any) -> str:
    """What the memory behind a pointer that is not live says."""
    if pointer.get("readable") is False:
        return "its memory cannot be read: unmapped"
    if pointer.get("tcache") is True:
        return "freed: it sits in glibc's tcache, which keeps small blocks unfilled"
    if not isinstance(fill, int) or isinstance(fill, bool) or not 0 < fill < 256:
        return "MALLOC_PERTURB_ unknown: whether it was freed cannot be told"
    perturb = f"MALLOC_PERTURB_={fill}"
    if pointer.get("fill") is True:
        return f"freed: holds the {fill:#04x} fill of {perturb}"
    if pointer.get("fill") is False:
        return (f"its memory does not hold the {fill:#04x} fill of {perturb}: reused since it was freed, "
                f"or never a {KIND_WORDS.get(str(pointer.get('kind')), 'object')}")
    return "MALLOC_PERTURB_ unknown: whether it was freed cannot be told"


def value_is_fill(pointer: dict[str, Any], fill: Any) -> bool:
    """The pointer's own value is the MALLOC_PERTURB_ byte repeated (0xf7f7f7f7f7f7f7f7): it was read from freed
    memory (a freed object's field, a freed list element's link)."""
    if not isinstance(fill, int) or isinstance(fill, bool) or not 0 < fill < 256:
        return False
    try:
        return int(str(pointer.get("address")), 16) == int.from_bytes(bytes([fill]) * 8, "little")
    except ValueError:
        return False


def pointer_words(pointer: dict[str, Any], fill: Any) -> str:
    """`bs=0x... is node 'drive0'`, `bs=0x... is not a live node (freed: ...)`, `bs is NULL`."""
    name, kind = _text(pointer.get("name"), 40), KIND_WORDS.get(str(pointer.get("kind")), "object")
    if pointer.get("optimized_out"):
        return f"{name} (a {kind}) is optimized out"
    if pointer.get("null"):
        return f"{name} is NULL"
    address = _text(pointer.get("address"), 24)
    if value_is_fill(pointer, fill):
        return (f"{name}={address} was read from freed memory (its value is the {fill:#04x} fill of "
                f"MALLOC_PERTURB_={fill})")
    if pointer.get("live") is True:
        return f"{name}={address} is {_text(pointer.get('label'), 80)}"
    if pointer.get("live") is False:
        return f"{name}={address} is not a live {kind} ({_fill_words(pointer, fill)})"
    if _freed(pointer, fill):
        return f"{name}={address} is no {kind} the graph uses ({_fill_words(pointer, fill)})"
    return f"{name}={address} is no {kind} the graph uses"


def _is_bad(pointer: dict[str, Any], fill: Any) -> bool:
    """A pointer that is not live, or freed (_freed), whatever the lists say."""
    return pointer.get("live") is False or _freed(pointer, fill)


def _freed(pointer: dict[str, Any], fill: Any) -> bool:
    """Freed beyond doubt: its memory holds the MALLOC_PERTURB_ fill, it sits in glibc's tcache, or its value is the
    fill (read from freed memory)."""
    return pointer.get("fill") is True or pointer.get("tcache") is True or value_is_fill(pointer, fill)


def _first_bad(frames: list[dict[str, Any]], fill: Any, strong: bool = False) -> tuple[int, dict[str, Any]] | None:
    """The first pointer that is not live (strong: whose memory holds the fill, or whose value is the fill: freed
    beyond doubt). A local variable counts only when strong: one not yet set holds whatever was there."""
    for index, frame in enumerate(frames):
        for pointer in _dicts(frame.get("pointers")):
            if _freed(pointer, fill) if strong or pointer.get("local") else _is_bad(pointer, fill):
                return index, pointer
    return None


def _null_fault(name: str, top: dict[str, Any], address: Any) -> str:
    """`SIGSEGV in f (file:line): bs is NULL (fault at 0x10)` when the crashing frame faulted on a NULL pointer."""
    try:
        low = isinstance(address, str) and int(address, 16) < PAGE
    except ValueError:
        low = False
    null = [p for p in _dicts(top.get("pointers")) if p.get("null")]
    if not (low and null):
        return ""
    return f"{name} in {_function(top)}{_where(top)}: {pointer_words(null[0], None)} (fault at {address})"


def _signal_name(facts: dict[str, Any]) -> str:
    signal = facts.get("signal")
    return _text(signal.get("name"), 20) if isinstance(signal, dict) and signal.get("name") else "a signal"


def _function(frame: dict[str, Any] | None) -> str:
    return _text(frame.get("function"), 80) if frame and frame.get("function") else "??"


def _first_line(facts: dict[str, Any], frames: list[dict[str, Any]]) -> str:
    """The cause, complete on its own."""
    top = frames[0] if frames else None
    assertion = facts.get("assertion")
    if isinstance(assertion, dict) and assertion.get("expression") is not None:
        function = _text(assertion.get("function") or _function(top), 80)
        where = (f" ({_text(assertion.get('file'))}:{_text(assertion.get('line'))})"
                 if assertion.get("file") else _where(top or {}))
        return f'assertion failed in {function}: "{_text(assertion.get("expression"), 200)}"{where}'
    error = facts.get("error_abort")
    if isinstance(error, dict) and error.get("message") is not None:
        where = f" ({_text(error.get('file'))}:{_text(error.get('line'))})" if error.get("file") else ""
        return f'&error_abort in {_text(error.get("function"), 80)}: "{_text(error.get("message"), 300)}"{where}'
    name = _signal_name(facts)
    if top is None:
        plumbing = [_text(p, 60) for p in facts.get("plumbing", []) if isinstance(p, str)][:1] \
            if isinstance(facts.get("plumbing"), list) else []
        return f"{name} outside QEMU's code{' in ' + plumbing[0] if plumbing else ''} (no frame of the program)"
    signal = facts.get("signal") if isinstance(facts.get("signal"), dict) else {}
    address = signal.get("address") if isinstance(signal, dict) else None
    null = _null_fault(name, top, address)
    # Strongest first: freed memory (in the crashing frame, then its callers), a NULL the crashing frame faulted
    # on, then anything else not live in it. In the callers only freed memory counts: optimized code leaves
    # stale values in outer frames' arguments.
    fill = facts.get("fill")
    for skip, bad in ((0, _first_bad(frames[:1], fill, strong=True)), (1, _first_bad(frames[1:], fill, strong=True)),
                      (0, None if null else _first_bad(frames[:1], fill))):
        if bad is not None:
            index, pointer = bad[0] + skip, bad[1]
            words = pointer_words(pointer, facts.get("fill"))
            if index == 0:
                return f"{name} in {_function(top)}: {words}"
            return f"{name} in {_function(top)}, called from {_function(frames[index])} where {words}"
    if null:
        return null
    called = {p for p in facts.get("plumbing", []) if isinstance(p, str)} if isinstance(
        facts.get("plumbing"), list) else set()
    if name == "SIGABRT" and called & {"abort", "__GI_abort"}:
        return f"abort() called in {_function(top)}{_where(top)}"
    if isinstance(address, str):
        return f"{name} in {_function(top)}{_where(top)} at address {address}"
    sent = isinstance(signal, dict) and isinstance(signal.get("code"), int) and signal["code"] <= 0
    return f"{name} in {_function(top)}{_where(top)}" + (" (sent by kill or raise, not a fault)" if sent else "")


def _chain(program: str, facts: dict[str, Any], frames: list[dict[str, Any]]) -> str:
    """Where: the program, its thread, and QEMU's first frames."""
    thread = facts.get("thread")
    who = f"{printable(program)}" + (f" thread {thread}" if isinstance(thread, int) else "")
    if isinstance(facts.get("coroutine"), str):
        who += f" (in coroutine {_text(facts['coroutine'], 24)})"
    # a function shown twice in a row (a recursion, or gdb's inline frame and its caller) is named once
    distinct = [f for i, f in enumerate(frames) if i == 0 or _function(f) != _function(frames[i - 1])]
    chain = " <- ".join(f"{_function(f)}{_where(f)}" for f in distinct[:MAX_CHAIN])
    return f"{who}: {chain}" if chain else who


def _pointers_line(facts: dict[str, Any], frames: list[dict[str, Any]], first: str) -> str:
    """The other pointers checked (the first line's one left out): what each is, live or not."""
    words = []
    seen: set[str] = set()
    for frame in frames[:3]:
        for pointer in _dicts(frame.get("pointers")):
            said = pointer_words(pointer, facts.get("fill"))
            key = f"{pointer.get('name')}={pointer.get('address')}"
            if pointer.get("optimized_out") or pointer.get("null") or key in seen or said in first:
                continue
            if pointer.get("local") and not (pointer.get("live") is True or _freed(pointer, facts.get("fill"))):
                continue  # a local not yet set holds whatever was there: said only when it tells something
            seen.add(key)
            words.append(said)
    return ("pointers: " + "; ".join(words)) if words else ""


def explain(facts: Any, program: str) -> list[str]:
    """One to three lines: the cause, where, and what the other pointers are. [] without facts."""
    if not isinstance(facts, dict):
        return []
    if facts.get("error"):
        return [f"{_signal_name(facts)} in {printable(program)}; crash facts not read: {_text(facts['error'])}"]
    frames = _dicts(facts.get("frames"))
    first = _first_line(facts, frames)
    lines = [first, _chain(program, facts, frames), _pointers_line(facts, frames, first)]
    return [line[:MAX_LINE] for line in lines if line]


def text_lines(facts: Any) -> list[str]:
    """The crash as the block-state text dump shows it (before the graph): signal, assertion, frames with
    every pointer argument checked."""
    if not isinstance(facts, dict):
        return []
    out = ["Crash:"]
    if facts.get("error"):
        return [*out, f"  crash facts not read: {_text(facts['error'])}", ""]
    signal = facts.get("signal") if isinstance(facts.get("signal"), dict) else {}
    out.append(f"  signal {_signal_name(facts)}" + (f" at address {_text(signal.get('address'))}"
                                                    if isinstance(signal, dict) and signal.get("address") else "")
               + (f" on thread {facts['thread']}" if isinstance(facts.get("thread"), int) else "")
               + (f", in coroutine {_text(facts['coroutine'])}" if isinstance(facts.get("coroutine"), str) else ""))
    assertion = facts.get("assertion")
    if isinstance(assertion, dict):
        out.append(f"  assertion: {_text(assertion.get('message'), MAX_LINE)}")
    if isinstance(facts.get("fill"), int) and 0 < facts["fill"] < 256:
        out.append(f"  freed memory holds {facts['fill']:#04x} (MALLOC_PERTURB_={facts['fill']})")
    plumbing = [_text(p, 80) for p in facts.get("plumbing", []) if isinstance(p, str)] \
        if isinstance(facts.get("plumbing"), list) else []
    if plumbing:
        out.append(f"  before QEMU's frames: {' <- '.join(plumbing)}")
    for frame in _dicts(facts.get("frames")):
        out.append(f"  #{_text(frame.get('level'), 8)} {_function(frame)}{_where(frame)}")
        out += [f"      {pointer_words(p, facts.get('fill'))}" for p in _dicts(frame.get("pointers"))]
    return [*out, ""]
