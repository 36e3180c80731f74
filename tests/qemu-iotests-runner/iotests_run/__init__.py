"""iotests-run: run QEMU's block-layer iotests in parallel sandboxes."""

from pathlib import Path

__version__ = "0.1.0"

# Where tools/qemu-integrate installs our dependencies, beside the package in a QEMU tree.
DEPS = Path(__file__).resolve().parent.parent / "_deps"
