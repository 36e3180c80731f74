"""iotests-run: run QEMU's block-layer iotests in parallel sandboxes."""

__version__ = "0.1.0"
