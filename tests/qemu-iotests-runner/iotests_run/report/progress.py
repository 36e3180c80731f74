"""Live progress: one line per finished run (CI logs and terminals alike)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from iotests_run.model import Outcome, Result
from iotests_run.report.outcomes import PRESENTATION


class Progress:
    def __init__(self, total: int, stream: TextIO = sys.stdout) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.width = len(str(total))
        self.last_line = time.monotonic()

    def note(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self.last_line = time.monotonic()

    def finished(self, result: Result) -> None:
        self.done += 1
        word = PRESENTATION[result.outcome].word
        line = (f"[{self.done:>{self.width}}/{self.total}] {word:<11} {result.run.combo:<12} "
                f"{result.run.test.name:<28} {result.duration_s:6.1f} s")
        if result.outcome is not Outcome.PASS and result.reason:
            line += f"  {result.reason.splitlines()[0][:120]}"
        self.note(line)
