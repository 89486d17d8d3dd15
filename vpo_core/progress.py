"""Progress of long loops (LLM batches, sampling) as log lines on the ``vpo_core`` logger.

The CLI and the workers name ``vpo_core`` in PREFECT_LOGGING_EXTRA_LOGGERS, so the lines
reach the terminal and the flow run's log in the UI while ``vpo_core`` stays free of
Prefect. A line is written at most every ``every_s`` seconds, and at the end only when the
loop was long enough to need one.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("vpo_core.progress")


class Progress:
    """Counts finished items of ``what`` out of ``total``."""

    def __init__(self, what: str, total: int, every_s: float = 10.0) -> None:
        self.what, self.total, self.every_s = what, total, every_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        finished = self.done >= self.total
        if now - self.last >= self.every_s or (finished and now - self.start >= self.every_s):
            rate = self.done / max(now - self.start, 1e-9)
            log.info("%s: %d/%d done (%.2f/s)", self.what, self.done, self.total, rate)
            self.last = now
