"""The registry of live runs: supervise adds and removes them, progress reads them, an interrupt stops them."""

from __future__ import annotations

import threading
import time

from iotests_run.model import LiveRun


class Registry:
    """The live runs, so that progress can name the quiet ones and an interrupt stops them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, LiveRun] = {}
        self.stopping = threading.Event()
        self.why = "the runner was interrupted"  # said by every run stopped or not started because of it

    def add(self, key: str, label: str) -> LiveRun:
        now = time.monotonic()
        live = LiveRun(label, now, now)
        with self._lock:
            self._live[key] = live
        return live

    def discard(self, key: str) -> None:
        with self._lock:
            self._live.pop(key, None)

    def live(self) -> list[LiveRun]:
        with self._lock:
            return list(self._live.values())

    def stop_copies(self, base_label: str) -> None:
        """Ask the live copies of one run (labels `BASE #k`) to stop (--until-fail)."""
        with self._lock:
            for live in self._live.values():
                if live.label.startswith(base_label + " #"):
                    live.stop.set()

    def stop(self, why: str = "the runner was interrupted") -> None:
        """Ask every live run to end now; each worker kills its own run's processes."""
        if not self.stopping.is_set():
            self.why = why
        self.stopping.set()
