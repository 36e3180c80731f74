"""The user-facing error roots, turned into one line and an exit status in cli.main(), and the parser
class every sub-command uses so that argparse's errors become them."""

import argparse
from typing import NoReturn


class UsageError(Exception):
    """The command line asked for something that does not exist (exit 2)."""


class SetupError(Exception):
    """The QEMU tree, build or results folder cannot be used (exit 2)."""


class Parser(argparse.ArgumentParser):
    """argparse's errors as UsageError: one line and exit 2 in main(), never argparse's own exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)
