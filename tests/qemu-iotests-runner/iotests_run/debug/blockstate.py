"""QEMU's block-layer state, read from a hung process or a core by gdb, rendered for people.

gdbscripts/block_state.py runs inside gdb (in the same session that takes the backtraces) and
writes JSON; this module turns that into block-*.txt (readable), block-*.dot (graphviz: backends,
jobs and nodes as distinct shapes; nodes with requests in flight or quiesced marked; edges with
the child's name and permissions) and block-*.svg (rendered by graphviz's `dot` where it is
installed), and a one-line summary for results.json, JUnit, the summary and report.html.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from iotests_run.debug import crash
from iotests_run.errors import UsageError
from iotests_run.inputs import parse_json, read_bytes
from iotests_run.text import printable

SWITCH_FRAMES = {"qemu_coroutine_switch", "qemu_coroutine_yield"}
DOT_TIMEOUT_S = 20.0
MAX_JSON_BYTES = 64 << 20  # the walker's bounds (1000 nodes, 50 requests each, 30 frames) stay well below
MAX_DEPTH = 16  # the walker nests 5 deep
# BdrvChildRole and BlockPermission bits (include/block/block-common.h)
ROLES = ((1, "data"), (2, "metadata"), (4, "filtered"), (8, "cow"), (16, "primary"))
PERMS = ((1, "consistent-read"), (2, "write"), (4, "write-unchanged"), (8, "resize"))
SHORT_PERMS = {"consistent-read": "R", "write": "W", "write-unchanged": "w", "resize": "s"}


def load(path: Path) -> dict[str, Any]:
    """The walker's document as it wrote it (the renderers make its strings printable, --json keeps them);
    {"error": ...} when gdb wrote none, or it is unreadable or not shaped as the walker writes it."""
    try:
        data = parse_json(read_bytes(path, "block state", MAX_JSON_BYTES, follow_links=False), "block state", path)
    except UsageError as exc:
        reason = "gdb wrote none" if "no such file" in str(exc) else str(exc).split(": ", 1)[-1]
        return {"error": f"no block state from gdb ({reason})"}
    if not isinstance(data, dict) or not _well_formed(data, SHAPE):
        return {"error": "no block state from gdb (not a document of the walker)"}
    if "error" in data:  # the walker's own refusal (no debug info, no process), or a walk cut short
        kept = {"crash": data["crash"]} if isinstance(data.get("crash"), dict) else {}  # written before the walk
        return {"error": printable_string(str(data["error"])), **kept}
    return data


def _renderable(state: dict[str, Any]) -> dict[str, Any]:
    """What the renderers show: the document with its strings printable, or the reason it cannot be shown."""
    if not isinstance(state, dict) or not _well_formed(state, SHAPE):
        return {"error": "no block state from gdb (not a document of the walker)"}
    return dict(_printable(state))


# The walker's lists (of objects) and the lists inside their elements: what the renderers iterate.
SHAPE: dict[str, Any] = {"nodes": {"children": {}, "requests": {"backtrace": {}}}, "backends": {},
                         "jobs": {"nodes": {}}, "threads": {"callers": {"backtrace": {}}}}


def _well_formed(document: dict[str, Any], shape: dict[str, Any]) -> bool:
    """Each list the renderers iterate is a list of objects (absent is fine)."""
    for key, inner in shape.items():
        items = document.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) and _well_formed(i, inner) for i in items):
            return False
    return True


# Text read from QEMU's memory (node names, file names, job ids...) may hold line breaks and escape
# sequences; surrogates from a hand-made document could not even be encoded.
_UNPRINTABLE = re.compile("[\ud800-\udfff\ufffe\uffff]")


def printable_string(value: str) -> str:
    """One line, no control character, encodable as UTF-8 and allowed in XML."""
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", printable(value))


def _printable(value: Any, depth: int = 0) -> Any:
    """The document with every string (keys too) made printable, nesting bounded."""
    if isinstance(value, str):
        return printable_string(value)
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, dict):
        return {printable_string(str(k)): _printable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v, depth + 1) for v in value]
    return value


def _bits(value: int | None, table: Iterable[tuple[int, str]]) -> list[str]:
    return [name for bit, name in table if isinstance(value, int) and value & bit]


def _node_label(node: dict[str, Any]) -> str:
    return f'"{node.get("node_name") or "?"}"' if node.get("node_name") else f"#{node.get('address')}"


def _frames(backtrace: list[dict[str, Any]], count: int) -> list[str]:
    names = [f.get("function") or f.get("pc", "?") for f in backtrace if "error" not in f]
    return [n for n in names if n not in SWITCH_FRAMES][:count]


def requests(state: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(node, request) for every tracked request in flight."""
    return [(node, req) for node in state.get("nodes", []) for req in node.get("requests", [])]


def summary(state: dict[str, Any], who: str) -> str:
    """One line: the graph's size and the first request in flight with the innermost frames of its coroutine."""
    state, who = _renderable(state), printable_string(who)
    if "error" in state:
        return f"{who} block: {state['error']}"
    nodes, reqs = state.get("nodes", []), requests(state)
    line = f"{who} block: {len(nodes)} node{'s' * (len(nodes) != 1)}"
    jobs = state.get("jobs", [])
    if jobs:
        line += ", " + ", ".join(f"job {j.get('id')} ({j.get('type')}, {j.get('status')})" for j in jobs[:3])
    if not reqs:
        quiesced = [n for n in nodes if n.get("quiesce_counter")]
        return line + (f", no request in flight, {len(quiesced)} quiesced" if quiesced else ", no request in flight")
    node, req = reqs[0]
    line += (f", {len(reqs)} request{'s' * (len(reqs) != 1)} in flight: {req.get('type')} "
             f"{req.get('offset')}+{req.get('bytes')} on node {_node_label(node)}")
    frames = _frames(req.get("backtrace", []), 5)
    return line + ("".join(f" <- {f}" for f in frames) if frames else "")


def _context(address: str | None, main: str | None) -> str:
    return "main" if address is not None and address == main else (address or "?")


def text(state: dict[str, Any], title: str) -> str:
    """The readable dump."""
    state, title = _renderable(state), printable_string(title)
    out = [title, "", *crash.text_lines(state.get("crash"))]
    if "error" in state:
        return "\n".join([*out, f"no block state: {state['error']}", ""])
    names = {n.get("address"): _node_label(n) for n in state.get("nodes", [])}
    parents = _parents(state, names)
    out.append(f"bdrv_drain_all nesting: {state.get('drain_all_count')}"
               + (f"; graph lock writer: {'yes' if state['graph_writer'] else 'no'}"
                  if state.get("graph_writer") is not None else ""))
    out += ["", f"Nodes ({len(state.get('nodes', []))}):"]
    for node in state.get("nodes", []):
        out.append(f"  {_node_label(node)} {node.get('driver') or '?'} {node.get('filename') or ''}".rstrip()
                   + _node_identity(node))
        out.append(f"      refcnt {node.get('refcnt')}, AioContext {_context_name(state, node.get('aio_context'))}, "
                   f"in_flight {node.get('in_flight')}{_tracked(node)}, quiesce_counter {node.get('quiesce_counter')}")
        out.append(f"      parents: {', '.join(parents.get(node.get('address'), [])) or 'none'}")
        for child in node.get("children", []):
            out.append(f"      child {child.get('name')} -> {names.get(child.get('node'), child.get('node'))}"
                       f" (role {'|'.join(_bits(child.get('role'), ROLES)) or '-'}; perm "
                       f"{'|'.join(_bits(child.get('perm'), PERMS)) or '-'}; shared "
                       f"{'|'.join(_bits(child.get('shared_perm'), PERMS)) or '-'})"
                       + (" frozen" if child.get("frozen") else ""))
        for req in node.get("requests", []):
            waits = f", waiting for request {req['waiting_for']}" if req.get("waiting_for") else ""
            out.append(f"      request {req.get('type')} {req.get('offset')}+{req.get('bytes')} "
                       f"(coroutine {req.get('co')}{waits}):")
            out += [f"          {_frame_line(f)}" for f in req.get("backtrace", [])]
    out += ["", f"Block backends ({len(state.get('backends', []))}):"]
    for blk in state.get("backends", []):
        out.append(f"  {blk.get('name') or '(anonymous)'} -> {names.get(blk.get('root'), blk.get('root'))}, "
                   f"device {'attached' if blk.get('device') else 'none'}, in_flight {blk.get('in_flight')}, "
                   f"quiesce_counter {blk.get('quiesce_counter')}, queued requests {blk.get('queued_requests')}")
    out += ["", f"Jobs ({len(state.get('jobs', []))}):"]
    for job in state.get("jobs", []):
        flags = [f for f in ("busy", "paused", "cancelled") if job.get(f)]
        out.append(f"  {job.get('id')}: {job.get('type')}, {job.get('status')}, pause_count {job.get('pause_count')}"
                   f", ret {job.get('ret')}{', ' + ', '.join(flags) if flags else ''}; nodes "
                   + ", ".join(f"{c.get('name')} -> {names.get(c.get('node'), c.get('node'))}"
                               for c in job.get("nodes", [])))
    out += ["", "Threads:"]
    for thread in state.get("threads", []):
        out.append(f"  thread {thread.get('num')} ({_thread_name(thread)}): current coroutine "
                   f"{thread.get('current') or 'none (not in a coroutine)'}")
        for caller in thread.get("callers", []):
            out.append(f"      parked caller {caller.get('co')}:")
            out += [f"          {_frame_line(f)}" for f in caller.get("backtrace", [])]
    out += _hang_text(state, names)
    return "\n".join(out) + "\n"


def _node_identity(node: dict[str, Any]) -> str:
    """ (0x55..., read-only, inactive): the address gdb's frames show as bs=0x..., and the open flags."""
    flags = [f for f, on in (("read-only", node.get("read_only")), ("inactive", node.get("inactive"))) if on]
    return f" ({', '.join([str(node.get('address')), *flags])})"


def _tracked(node: dict[str, Any]) -> str:
    """ (1 tracked request; 1 not a request): in_flight set against the requests tracked on the node."""
    tracked, in_flight = node.get("tracked"), node.get("in_flight")
    if not isinstance(tracked, int):
        return ""
    text = f" ({tracked} tracked request{'s' * (tracked != 1)}"
    if isinstance(in_flight, int) and in_flight > tracked:
        text += f"; {in_flight - tracked} not a request"
    return text + ")"


def _context_name(state: dict[str, Any], address: Any) -> str:
    """main, an IOThread's id, else the address."""
    for ctx in state.get("contexts", []) if isinstance(state.get("contexts"), list) else []:
        if isinstance(ctx, dict) and ctx.get("address") == address and ctx.get("name"):
            named = str(ctx["name"])
            return named if named.startswith("context@") or named == "main" else f"{named} ({address})"
    return _context(address, state.get("main_aio_context"))


def _thread_name(thread: dict[str, Any]) -> str:
    label = thread.get("label") or thread.get("name") or "?"
    return f"{label}, LWP {thread['lwp']}" if thread.get("lwp") else str(label)


def _dict_list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _hang_text(state: dict[str, Any], names: dict[Any, str]) -> list[str]:
    """The hang facts: each thread's own stack, the contexts (lock holder, what is scheduled), the jobs'
    own coroutines and a mirror's operations, the CoMutexes held and the coroutines queued."""
    out: list[str] = []
    if state.get("threads") and state.get("hang_facts") != "complete":
        out += ["", "Hang facts (thread stacks, AioContexts, job coroutines): not read (gdb stopped first)"]
    lwps = {t.get("lwp"): t for t in _dict_list(state.get("threads")) if t.get("lwp")}
    stacks = [t for t in _dict_list(state.get("threads")) if t.get("frames")]
    if stacks:
        out += ["", "Thread stacks (innermost first):"]
        for thread in stacks:
            out.append(f"  thread {thread.get('num')} ({_thread_name(thread)}):")
            out += [f"      {_frame_line(f)}{_args(f)}" for f in _dict_list(thread.get("frames"))]
    contexts = _dict_list(state.get("contexts"))
    if contexts:
        out += ["", f"AioContexts ({len(contexts)}):"]
    for ctx in contexts:
        lock: dict[str, Any] = ctx["lock"] if isinstance(ctx.get("lock"), dict) else {}
        owner = lwps.get(lock.get("owner_lwp")) if lock.get("owner_lwp") else None
        held = (f"lock held by thread {owner.get('num')} ({_thread_name(owner)}), depth {lock.get('count')}"
                if owner else f"lock held by LWP {lock['owner_lwp']}" if lock.get("owner_lwp") else "lock free")
        out.append(f"  {ctx.get('name')} ({ctx.get('address')}): {held if lock else 'no AioContext lock'}")
        for scheduled in _dict_list(ctx.get("scheduled")):
            out.append(f"      scheduled coroutine {scheduled.get('co')}:")
            out += [f"          {_frame_line(f)}" for f in _dict_list(scheduled.get("backtrace"))]
        for bh in _dict_list(ctx.get("bottom_halves")):
            out.append(f"      bottom half pending: {bh.get('callback') or bh.get('name')} (opaque {bh.get('opaque')})")
    for node in _dict_list(state.get("nodes")):
        mutex: dict[str, Any] = node["reqs_lock"] if isinstance(node.get("reqs_lock"), dict) else {}
        if mutex:
            out.append(f"  {names.get(node.get('address'))}: reqs_lock held by coroutine {mutex.get('holder')}, "
                       f"{len(_dict_list(mutex.get('waiters')))} waiting")
        for waiter in _dict_list(node.get("flush_waiters")):
            out.append(f"  {names.get(node.get('address'))}: coroutine {waiter.get('co')} queued for a flush")
    for job in _dict_list(state.get("jobs")):
        co: dict[str, Any] = job["coroutine"] if isinstance(job.get("coroutine"), dict) else {}
        if not co:
            continue
        flags: dict[str, Any] = job["flags"] if isinstance(job.get("flags"), dict) else {}
        out += ["", f"Job {job.get('id')}: coroutine {co.get('co')}"
                + (" (running on a thread)" if co.get("running") else "")
                + f"; {', '.join(f'{k} {v}' for k, v in flags.items())}"]
        out += [f"    {_frame_line(f)}" for f in _dict_list(co.get("backtrace"))]
        for op in _dict_list(job.get("ops_in_flight")):
            out.append(f"    op {op.get('address')} {op.get('offset')}+{op.get('bytes')}"
                       f"{' active-write' if op.get('active_write') else ''}{' pseudo' if op.get('pseudo') else ''}"
                       f", coroutine {op.get('co')}, waiting for op {op.get('waiting_for_op')}, "
                       f"{len(_dict_list(op.get('waiters')))} request(s) parked on it")
    return out


def _args(frame: dict[str, Any]) -> str:
    args = frame.get("args")
    return f" [{', '.join(f'{k}={v}' for k, v in args.items())}]" if isinstance(args, dict) and args else ""


def _parents(state: dict[str, Any], names: dict[Any, str]) -> dict[Any, list[str]]:
    """Each node's users: the nodes, backends and jobs that have it as a child (and as which)."""
    out: dict[Any, list[str]] = {}
    for node in state.get("nodes", []):
        for child in node.get("children", []):
            out.setdefault(child.get("node"), []).append(f"{names.get(node.get('address'))} ({child.get('name')})")
    for blk in state.get("backends", []):
        out.setdefault(blk.get("root"), []).append(f"backend {blk.get('name') or '(anonymous)'} (root)")
    for job in state.get("jobs", []):
        for child in job.get("nodes", []):
            out.setdefault(child.get("node"), []).append(f"job {job.get('id')} ({child.get('name')})")
    return out


def _frame_line(frame: dict[str, Any]) -> str:
    if "error" in frame:
        return f"(unwinding stopped: {frame['error']})"
    where = f" at {frame['file']}:{frame['line']}" if frame.get("file") else ""
    running = (f"  [running on thread {frame['running_on_thread']}: unwound from its registers]"
               if frame.get("running_on_thread") else "")
    return f"{frame.get('function') or '??'} ({frame.get('pc')}){where}{running}"


# graphviz passes an entity in a label through to SVG as it is: a raw & could start one ("&#27;").
_DOT_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\\": "\\\\", '"': '\\"'})
MAX_DOT_FILENAME = 60


def _dot_string(value: str) -> str:
    """A DOT quoted string whose lines (\\n in a label) are each made printable, with backslashes and quotes
    escaped and &, <, > as entities: SVG is XML, which allows no control character and no stray &."""
    return '"' + "\\n".join(printable_string(line).translate(_DOT_ENTITIES) for line in value.split("\n")) + '"'


def _short(filename: str) -> str:
    return filename if len(filename) <= MAX_DOT_FILENAME else "..." + filename[-MAX_DOT_FILENAME + 3:]


def dot(state: dict[str, Any], title: str) -> str:
    """The graph for graphviz: boxes are nodes (red: requests in flight; yellow: quiesced), ellipses
    block backends, hexagons jobs; edges carry the child's name and permissions (R consistent-read,
    W write, w write-unchanged, s resize; shared after the slash)."""
    state = _renderable(state)
    lines = ["digraph block {", f"  label={_dot_string(title)}; labelloc=t; rankdir=TB;",
             '  node [fontname="monospace", fontsize=10]; edge [fontname="monospace", fontsize=9];']
    for node in state.get("nodes", []):
        reqs = node.get("requests", [])
        colour = "#f28b82" if reqs or node.get("in_flight") else "#fdd663" if node.get("quiesce_counter") else "#ffffff"
        label = (f"{node.get('node_name') or node.get('address')}\n{node.get('driver') or '?'}\n"
                 + (f"{_short(str(node['filename']))}\n" if node.get("filename") else "")
                 + f"in_flight {node.get('in_flight')}, quiesced {node.get('quiesce_counter')}")
        label += "".join(f"\n{r.get('type')} {r.get('offset')}+{r.get('bytes')}" for r in reqs[:4])
        lines.append(f"  {_dot_string(str(node.get('address')))} [shape=box, style=filled, "
                     f"fillcolor={_dot_string(colour)}, label={_dot_string(label)}];")
        for child in node.get("children", []):
            lines.append(f"  {_dot_string(str(node.get('address')))} -> {_dot_string(str(child.get('node')))} "
                         f"[label={_dot_string(_edge_label(child))}];")
    for blk in state.get("backends", []):
        label = f"backend {blk.get('name') or '(anonymous)'}\nin_flight {blk.get('in_flight')}"
        lines.append(f"  {_dot_string(str(blk.get('address')))} [shape=ellipse, label={_dot_string(label)}];")
        if blk.get("root"):
            lines.append(f"  {_dot_string(str(blk.get('address')))} -> {_dot_string(str(blk['root']))} "
                         f"[label=\"root\"];")
    for job in state.get("jobs", []):
        label = f"job {job.get('id')}\n{job.get('type')}, {job.get('status')}"
        lines.append(f"  {_dot_string(str(job.get('address')))} [shape=hexagon, label={_dot_string(label)}];")
        for child in job.get("nodes", []):
            lines.append(f"  {_dot_string(str(job.get('address')))} -> {_dot_string(str(child.get('node')))} "
                         f"[style=dashed, label={_dot_string(_edge_label(child))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _edge_label(child: dict[str, Any]) -> str:
    perm = "".join(SHORT_PERMS[p] for p in _bits(child.get("perm"), PERMS)) or "-"
    shared = "".join(SHORT_PERMS[p] for p in _bits(child.get("shared_perm"), PERMS)) or "-"
    return f"{child.get('name')}\n{perm}/{shared}"


def svg(dot_text: str) -> bytes | None:
    """The rendered graph, where graphviz's `dot` is installed."""
    program = shutil.which("dot")
    if program is None:
        return None
    try:
        done = subprocess.run([program, "-Tsvg"], input=dot_text.encode(), capture_output=True, timeout=DOT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def write(state: dict[str, Any], folder: Path, stem: str, title: str) -> list[str]:
    """stem.txt, stem.dot and (with graphviz) stem.svg in folder; the names written."""
    (folder / f"{stem}.txt").write_text(text(state, title), encoding="utf-8")
    if "error" in state:
        return [f"{stem}.txt"]
    graph = dot(state, title)
    (folder / f"{stem}.dot").write_text(graph, encoding="utf-8")
    files = [f"{stem}.txt", f"{stem}.dot"]
    image = svg(graph)
    if image is not None:
        (folder / f"{stem}.svg").write_bytes(image)
        files.append(f"{stem}.svg")
    return files


def json_text(state: dict[str, Any]) -> str:
    return json.dumps(state, indent=1) + "\n"
