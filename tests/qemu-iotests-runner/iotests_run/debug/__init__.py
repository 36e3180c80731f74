"""Debugging dumps of hung and crashed QEMUs: processes, gdb and py-spy, cores (`Evidence`, diagnostics),
the block-layer state read by gdbscripts/ and rendered (blockstate), and the `block-state` sub-command."""
