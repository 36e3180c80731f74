"""The user-facing error roots, turned into one line and an exit status in cli.main()."""


class UsageError(Exception):
    """The command line asked for something that does not exist (exit 2)."""


class SetupError(Exception):
    """The QEMU tree, build or results folder cannot be used (exit 2)."""
