"""QOM objects read in gdb: the IOThreads' ids (`-object iothread,id=...`), found through the QOM tree's
/objects container (glib's GHashTable of ObjectProperty read by its layout). Runs inside gdb."""

from __future__ import annotations

from typing import Any

import gdb

from iotests_run.debug.gdbscripts.walker_base import _static, _string

MAX_QOM_PROPERTIES = 4096


def iothread_ids() -> dict[int, str]:
    """IOThread object address -> its id (`-object iothread,id=...`), read from the QOM tree's /objects
    container: a GHashTable of ObjectProperty whose child<iothread> properties point at the objects."""
    try:
        base = _static("object_get_root::root")  # object_get_root()'s static Object *root
        container = _child_object(base, "objects") if base is not None and int(base) else None
        if container is None:
            return {}
        return {int(obj): name for name, kind, obj in _qom_children(container) if kind.startswith("child<iothread")}
    except (gdb.error, RuntimeError, ValueError):
        return {}


def _child_object(obj: Any, wanted: str) -> Any:
    for name, kind, child in _qom_children(obj):
        if name == wanted and kind.startswith("child<"):
            return child
    return None


def _qom_children(obj: Any) -> list[tuple[str, str, Any]]:
    """(name, type, opaque) of an Object's properties: glib's GHashTable read by its layout (size, mod, mask,
    nnodes, noccupied, two bit flags, keys, hashes, values), checked as it is read: a slot is used when its
    hash is 2 or more; values are pointers unless the table stores them small (then they are not ours)."""
    table = obj.cast(gdb.lookup_type("Object").pointer()).dereference()["properties"]
    word = gdb.lookup_type("unsigned long").pointer()
    u32 = gdb.lookup_type("unsigned int").pointer()
    base = int(table)
    if not base:
        return []
    size = int(gdb.Value(base).cast(word).dereference())
    flags = int(gdb.Value(base + 24).cast(u32).dereference())
    if size < 8 or size > MAX_QOM_PROPERTIES or size & (size - 1) or not flags & 2:  # have_big_values
        return []
    keys, hashes, values = (int(gdb.Value(base + off).cast(word).dereference()) for off in (32, 40, 48))
    prop_type = gdb.lookup_type("ObjectProperty").pointer()
    out = []
    for i in range(size):
        if int(gdb.Value(hashes + 4 * i).cast(u32).dereference()) < 2:
            continue
        prop = gdb.Value(int(gdb.Value(values + 8 * i).cast(word).dereference())).cast(prop_type).dereference()
        name, kind = _string(prop["name"], 128), _string(prop["type"], 128)
        if name is not None and kind is not None:
            out.append((name, kind, prop["opaque"]))
    del keys
    return out
