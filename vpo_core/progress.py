"""Progress of long loops (LLM batches, sampling) as log lines on the ``vpo_core`` logger.

The CLI and the workers name ``vpo_core`` in PREFECT_LOGGING_EXTRA_LOGGERS, so the lines
reach the terminal and the flow run's log in the UI while ``vpo_core`` stays free of
Prefect. A line is written at most every ``every_s`` seconds, and at the end only when the
loop was long enough to need one.
"""

from __future__ import annotations

import json
import logging
import re
import time
from importlib.resources import files

from vpo_core.memory import peak_rss, reset_peak, rss

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
            eta = "" if finished else f", ETA {(self.total - self.done) / rate:.0f} s"
            log.info("%s: %d/%d done (%.2f/s%s)", self.what, self.done, self.total, rate, eta)
            self.last = now


def expected_seconds(preset: str) -> dict[str, float]:
    """Measured seconds per stage of ``preset`` (vpo_core/data/stage_seconds.json), keyed
    by stage label; an iteration's label (``sample-iter2``) counts as its stage."""
    table = json.loads(files("vpo_core.data").joinpath("stage_seconds.json").read_text())
    return table.get(preset, {})


class StageClock:
    """One line as each stage of a run starts and ends: where the run is, how long the
    stage took, its memory (resident set now and the stage's peak, from the OS), and an
    ETA for the rest from ``expected`` seconds per stage (the preset's measured figures,
    scaled by how this machine has done so far) or, without them, from the mean stage."""

    def __init__(self, stages: list[str], expected: dict[str, float] | None = None) -> None:
        self.stages, self.expected = stages, expected or {}
        self.done: dict[str, float] = {}
        self.start = time.monotonic()
        self.stage_start = self.start

    def begin(self, stage: str) -> None:
        self.stage_start = time.monotonic()
        reset_peak()
        log.info("stage %d/%d %s: started (%.0f s into the run)", self._index(stage),
                 len(self.stages), stage, self.stage_start - self.start)

    def end(self, stage: str) -> None:
        now = time.monotonic()
        self.done[stage] = now - self.stage_start
        log.info("stage %d/%d %s: done in %.0f s; memory %.2f GB, stage peak %.2f GB; "
                 "%.0f s into the run%s", self._index(stage), len(self.stages), stage,
                 self.done[stage], rss() / 1e9, peak_rss() / 1e9, now - self.start,
                 self._eta())

    def _index(self, stage: str) -> int:
        return self.stages.index(stage) + 1 if stage in self.stages else len(self.done) + 1

    def _eta(self) -> str:
        left = [s for s in self.stages if s not in self.done]
        if not left:
            return ""
        expect = {s: self.expected.get(re.sub(r"-iter\d+$", "", s)) for s in self.stages}
        known = [s for s in self.done if expect[s]]
        if all(expect[s] for s in left) and known:
            pace = sum(self.done[s] for s in known) / sum(expect[s] for s in known)
            seconds = pace * sum(expect[s] for s in left)
        else:
            seconds = sum(self.done.values()) / len(self.done) * len(left)
        return f", ETA {seconds:.0f} s for {len(left)} more"
