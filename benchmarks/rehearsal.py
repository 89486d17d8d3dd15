"""The rehearsal: the paper's pipeline shape, scaled down, on a real local Prefect server
with a cpu and a gpu process worker (configs/rehearsal.yaml: 1,000 SFT + 1,000 DPO + 100
eval queries, K = 4, the GPU stages placed on the gpu pool).

    python -m benchmarks.rehearsal [--root vpo-work/bench/rehearsal] [--kills 3] [--json F]
                                   [--set curate.split.sft=200 ...]

1. Starts the judge: the project's OpenAI-compatible server in its own process, latency
   lognormal (median 1 s, sigma 0.8), 5% transient faults (429 / 500 / malformed).
2. Starts a Prefect server, the cpu and gpu pools, the deployments and one worker per
   pool (``vpo ui up``), then runs ``vpo run --config rehearsal`` from an empty work
   directory and prints, per stage: wall time, rows in and out, task runs and flow runs,
   peak memory (every process of the run and the workers), bytes written; then the
   orchestration overhead: the pipeline's wall time minus the stages' own compute time
   (the union of the intervals in which their steps ran), and the work directory's size.
3. Runs it again in a second work directory, SIGKILLs ``vpo run`` at ``--kills`` random
   moments, resumes each time, and checks that the final ``dpo_pairs`` and
   ``eval_judgements`` equal the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import psutil

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("curate", "sft-data", "train-sft", "sample", "text-feedback", "render", "score",
          "pairs", "train-dpo", "evaluate")
FINAL_TABLES = ("dpo_pairs", "eval_judgements")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_judge(port: int) -> subprocess.Popen:
    """The judge server in its own process (it must not share the pipeline's cores'
    interpreter lock); returns once it answers."""
    import requests

    proc = subprocess.Popen(
        [sys.executable, "-m", "vpo_core.testing.openai_server", "--port", str(port),
         "--latency", "1.0", "--latency-sigma", "0.8", "--fault-rate", "0.05",
         "--faults", "rate_limit,server_error,malformed", "--retry-after", "1.0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/v1/stats", timeout=2)
            return proc
        except requests.RequestException:
            time.sleep(0.3)
    raise RuntimeError("the judge server did not start")


class MemorySampler(threading.Thread):
    """Samples the total RSS of some process trees every ``every_s`` seconds."""

    def __init__(self, pids: list[int], every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pids, self.every_s = pids, every_s
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for pid in list(self.pids):
                try:
                    root = psutil.Process(pid)
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
            self.samples.append((time.time(), total))
            self.stop.wait(self.every_s)

    def peak(self, start: float, end: float) -> int:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside, default=0)


def vpo_run(config: str, work: Path, api: str, judge_port: int,
            overrides: list[str]) -> list[str]:
    sets = [f"judge.api_base=http://127.0.0.1:{judge_port}/v1", *overrides]
    return [str(Path(sys.executable).parent / "vpo"), "run", "--config", config,
            "--work-dir", str(work), *[a for o in sets for a in ("--set", o)]]


def run_env(api: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_API_URL"] = api
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() \
        else 0


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of time intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


def _step_name(task_run_name: str) -> str:
    """A task run's task name (Prefect appends a short random suffix)."""
    return task_run_name.rsplit("-", 1)[0]


def _every(read: Any, **filters: Any) -> list:
    """All the runs a filter matches (the API answers at most 200 at a time)."""
    found: list = []
    while page := read(**filters, limit=200, offset=len(found)):
        found += page
        if len(page) < 200:
            break
    return found


def stage_report(api: str, start: float, end: float, work: Path, printed: str,
                 sampler: MemorySampler) -> dict[str, Any]:
    """Per stage: its steps' compute time and span, task runs, deployment runs, peak
    memory, bytes written; the rows each stage wrote; the orchestration overhead."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterStartTime,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.step import TASK_MODULES
    from tasks.caching import STEPS

    for module in TASK_MODULES:
        __import__(module)
    window = FlowRunFilter(start_time=FlowRunFilterStartTime(
        after_=datetime.fromtimestamp(start - 1).astimezone()))
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        flows = _every(client.read_flow_runs, flow_run_filter=window)
        tasks = _every(client.read_task_runs, flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[f.id for f in flows])))
    report: dict[str, Any] = {"stages": {}}
    compute = 0.0
    for stage in STAGES:
        mine = [t for t in tasks if t.name.startswith(stage)]
        steps = [t for t in mine if _step_name(t.name) in STEPS and t.start_time
                 and t.end_time and t.state and t.state.name != "Cached"]
        intervals = [(_ts(t.start_time), _ts(t.end_time)) for t in steps]
        own = union_seconds(intervals)
        compute += own
        first = min((a for a, _ in intervals), default=0.0)
        last = max((b for _, b in intervals), default=0.0)
        report["stages"][stage] = {
            "compute_s": round(own, 1), "span_s": round(last - first, 1),
            "task_runs": len(mine),
            "deployment_runs": sum((f.parameters or {}).get("stage") == stage
                                   for f in flows),
            "peak_rss_gb": round(sampler.peak(first, last) / 2**30, 2) if steps else None,
            "bytes_written": folder_bytes(work / "data" / stage)}
    report["rows"] = {k: int(v.replace(",", "")) for k, v in
                      re.findall(r"^\s+([\w-]+): ([\d,]+) rows", printed, re.M)}
    report["wall_s"] = round(end - start, 1)
    report["compute_s"] = round(compute, 1)
    report["overhead_s"] = round(end - start - compute, 1)
    report["overhead_share"] = round((end - start - compute) / (end - start), 3)
    report["work_dir_bytes"] = folder_bytes(work)
    report["peak_rss_gb"] = round(sampler.peak(start, end) / 2**30, 2)
    return report


def final_tables(work: Path) -> dict[str, pl.DataFrame]:
    found: dict[str, Path] = {}
    for path in sorted((work / "data").rglob("*.parquet"), key=lambda p: p.stat().st_mtime):
        if path.stem in FINAL_TABLES:
            found[path.stem] = path
    return {k: pl.read_parquet(v).drop("cost", "model", strict=False)
            for k, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("vpo-work/bench/rehearsal"))
    parser.add_argument("--config", default="rehearsal")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="a configuration override, as for vpo run "
                        "(e.g. curate.split.sft=200 for a smaller rehearsal)")
    args = parser.parse_args()

    from flows.ui import down, up
    from vpo_core.workdir import WorkDir

    root, sets = args.root.resolve(), args.overrides
    root.mkdir(parents=True, exist_ok=True)
    judge_port = free_port()
    judge = start_judge(judge_port)
    ui_work = WorkDir.at(root / "ui")
    state = up(ui_work, port=free_port())
    api = state["api"]
    out: dict[str, Any] = {"config": args.config, "overrides": args.overrides}
    try:
        workers = [pid for name, pid in state["pids"].items() if name.startswith("worker")]
        straight = root / "straight"
        sampler = MemorySampler([*workers])
        sampler.start()
        start = time.time()
        proc = subprocess.Popen(vpo_run(args.config, straight, api, judge_port, sets), cwd=ROOT,
                                env=run_env(api), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        sampler.pids.append(proc.pid)
        printed, _ = proc.communicate()
        end = time.time()
        sampler.stop.set()
        (root / "straight.log").write_text(printed)
        if proc.returncode != 0:
            raise SystemExit(f"the rehearsal failed (exit {proc.returncode}); see "
                             f"{root / 'straight.log'}:\n{printed[-3000:]}")
        out["run"] = stage_report(api, start, end, straight, printed, sampler)
        print_report(out["run"])

        killed = root / "killed"
        rng = random.Random(args.seed)
        wall = out["run"]["wall_s"]
        moments = sorted(rng.uniform(0.1, 0.9) * wall for _ in range(args.kills))
        resumes, t0 = [], time.time()
        for moment in moments:
            proc = subprocess.Popen(vpo_run(args.config, killed, api, judge_port, sets), cwd=ROOT,
                                    env=run_env(api), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            while time.time() - t0 < moment and proc.poll() is None:
                time.sleep(0.5)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                resumes.append(round(time.time() - t0, 1))
        t1 = time.time()
        done = subprocess.run(vpo_run(args.config, killed, api, judge_port, sets), cwd=ROOT,
                              env=run_env(api), capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the resumed run failed:\n{done.stdout[-3000:]}"
                             f"{done.stderr[-3000:]}")
        a, b = final_tables(straight), final_tables(killed)
        out["kills"] = {"killed_at_s": resumes, "final_resume_s": round(time.time() - t1, 1),
                        "identical": {t: bool(t in a and t in b and a[t].equals(b[t]))
                                      for t in FINAL_TABLES}}
        print(f"\nkilled at {resumes} s (from the first start); the last resume took "
              f"{out['kills']['final_resume_s']} s; identical to the straight run: "
              f"{out['kills']['identical']}")
    finally:
        down(ui_work)
        os.killpg(judge.pid, signal.SIGTERM)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def print_report(run: dict[str, Any]) -> None:
    print(f"\n{'stage':<14}{'compute s':>10}{'span s':>9}{'tasks':>7}{'runs':>6}"
          f"{'peak GB':>9}{'MB written':>12}")
    for stage, r in run["stages"].items():
        peak = "-" if r["peak_rss_gb"] is None else f"{r['peak_rss_gb']:.2f}"
        print(f"{stage:<14}{r['compute_s']:>10.1f}{r['span_s']:>9.1f}"
              f"{r['task_runs']:>7}{r['deployment_runs']:>6}{peak:>9}"
              f"{r['bytes_written'] / 2**20:>12.1f}")
    print("rows: " + ", ".join(f"{k} {v:,}" for k, v in run["rows"].items()))
    print(f"pipeline wall {run['wall_s']} s, stages' compute {run['compute_s']} s, "
          f"orchestration overhead {run['overhead_s']} s ({run['overhead_share']:.1%}); "
          f"work directory {run['work_dir_bytes'] / 2**30:.2f} GB; peak memory "
          f"{run['peak_rss_gb']} GB")


if __name__ == "__main__":
    main()
