"""The embedded default end to end: ``vpo run`` on cpu-tiny in a fresh work directory, in a
child process, with its memory read from the OS.

    python -m benchmarks.embedded [--work-dir DIR] [--glibc-default] [--quiet]

Every second the sampler walks /proc for the child and all its descendants (the temporary
Prefect server, a training launcher) and reads each one's resident set (VmRSS). Printed:
the pipeline's wall time, the largest single process's peak, the peak of the sum over the
tree at one sampled moment, and per stage (boundaries are the stages' "Beginning subflow
run ... for flow 'NAME'" lines) its wall time and both peaks, beside the figures of
issue 25 (same preset, same machine, before this work). ``--glibc-default`` runs without
the allocator settings the ``vpo`` command gives itself (vpo_core.memory), to measure
their effect; load (``/proc/loadavg``) is printed beside, as the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vpo_core.memory import MALLOC_ENV, MARKER

GIB = 1 << 30
# Issue 25, a fresh clone of main on this machine (pipeline 1,442 s, peak 14.7 GiB sampled
# every 15 s), seconds per stage.
BEFORE_S = {"curate": 69, "sft-data": 412, "train-sft": 388, "sample": 51,
            "text-feedback": 79, "render": 21, "score": 14, "train-dpo": 84, "evaluate": 294}
BEFORE_TOTAL_S, BEFORE_PEAK_GIB = 1442, 14.7
STAGE_LINE = re.compile(r"Beginning subflow run '[^']+' for flow '([a-z-]+)'")
FINISH_LINE = re.compile(r"pipeline finished .* in (\d+) s")


def _rss_tree(root: int) -> dict[int, int]:
    """Resident bytes of ``root`` and every descendant, read from /proc."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rfind(")") + 2:].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    rss = {}
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[pid] = int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss


@dataclass
class Window:
    """Peaks over one stretch of time (the run, or one stage)."""

    start: float
    end: float | None = None
    largest: int = 0      # the largest single process's resident set
    total: int = 0        # the sum over the process tree at one sampled moment

    def add(self, rss: dict[int, int]) -> None:
        if rss:
            self.largest = max(self.largest, max(rss.values()))
            self.total = max(self.total, sum(rss.values()))


@dataclass
class Recorder:
    """Samples the tree every ``every_s`` and files each sample under the current stage."""

    pid: int
    every_s: float = 1.0
    run: Window = field(default_factory=lambda: Window(time.monotonic()))
    stages: dict[str, Window] = field(default_factory=dict)
    current: str | None = None
    processes: dict[int, int] = field(default_factory=dict)   # pid -> its own peak
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stage(self, name: str | None) -> None:
        with self.lock:
            now = time.monotonic()
            if self.current:
                self.stages[self.current].end = now
            self.current = name
            if name:
                self.stages[name] = Window(now)

    def sample_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            rss = _rss_tree(self.pid)
            with self.lock:
                self.run.add(rss)
                if self.current:
                    self.stages[self.current].add(rss)
                for pid, value in rss.items():
                    self.processes[pid] = max(self.processes.get(pid, 0), value)
            stop.wait(self.every_s)


def _env(glibc_default: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV and k != MARKER}
    env.update(HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True",
               PYTHONUNBUFFERED="1")
    if glibc_default:
        env[MARKER] = "1"   # the vpo command then does not set the allocator
    return env


def run(work_dir: Path, glibc_default: bool, quiet: bool, sets: list[str]
        ) -> tuple[Recorder, float, int]:
    """Run the pipeline, echoing its lines unless ``quiet``; the recorder, the wall time
    and the exit code."""
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", "cpu-tiny",
           "--work-dir", str(work_dir), *[f"--set={s}" for s in sets]]
    started = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=_env(glibc_default), text=True, bufsize=1)
    rec = Recorder(child.pid)
    stop = threading.Event()
    sampler = threading.Thread(target=rec.sample_forever, args=(stop,), daemon=True)
    sampler.start()
    assert child.stdout is not None
    try:
        for line in child.stdout:
            if not quiet:
                sys.stdout.write(line)
            match = STAGE_LINE.search(line)
            if match:
                rec.stage(match.group(1))
            elif FINISH_LINE.search(line):
                rec.stage(None)
        code = child.wait()
    finally:   # interrupted: stop the run and what it started (its Prefect server)
        if child.poll() is None:
            for pid in _rss_tree(child.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    wall = time.monotonic() - started
    rec.stage(None)
    stop.set()
    sampler.join()
    return rec, wall, code


def report(rec: Recorder, wall: float, code: int, glibc_default: bool, load: str) -> str:
    """The figures, beside issue 25's."""
    setting = "glibc default" if glibc_default else "vpo's allocator settings"
    lines = [f"\nembedded default (cpu-tiny), {setting}; exit code {code}",
             f"load average before / after: {load}",
             f"{'':16}{'this run':>12}{'issue 25':>12}",
             f"{'pipeline wall':16}{wall:>10.0f} s{BEFORE_TOTAL_S:>10} s",
             f"{'largest process':16}{rec.run.largest / GIB:>8.2f} GiB"
             f"{BEFORE_PEAK_GIB:>8.1f} GiB",
             f"{'sum of processes':16}{rec.run.total / GIB:>8.2f} GiB{'':>12}",
             f"processes sampled: {len(rec.processes)}; their peaks (GiB): "
             + ", ".join(f"{v / GIB:.2f}" for v in sorted(rec.processes.values(),
                                                          reverse=True)[:5]),
             f"\n{'stage':14}{'wall s':>8}{'before s':>10}{'largest GiB':>13}{'sum GiB':>9}"]
    for name, w in rec.stages.items():
        seconds = (w.end or w.start) - w.start
        before = BEFORE_S.get(name)
        lines.append(f"{name:14}{seconds:>8.0f}{before if before else '-':>10}"
                     f"{w.largest / GIB:>13.2f}{w.total / GIB:>9.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="fresh work directory (default: a new temporary one)")
    parser.add_argument("--glibc-default", action="store_true",
                        help="run without the vpo command's allocator settings")
    parser.add_argument("--quiet", action="store_true", help="do not echo the run's lines")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to vpo run (a smaller run: not the embedded default, "
                        "so not comparable with issue 25's figures)")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vpo-embedded-"))
    if work.exists() and any(work.iterdir()):
        parser.error(f"{work} is not empty: the benchmark needs a fresh work directory")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # runs run()'s cleanup
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    rec, wall, code = run(work, args.glibc_default, args.quiet, args.set)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    if args.set:
        print(f"\nsettings changed: {' '.join(args.set)}")
    print(report(rec, wall, code, args.glibc_default,
                 f"{' '.join(load_before)} / {' '.join(load_after)}"))
    print(f"work directory: {work}")
    sys.exit(code)


if __name__ == "__main__":
    main()
