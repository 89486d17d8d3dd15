"""Stage-level LLM benchmark: sft-data on 2,000 real queries and text-feedback on 2,000
samples through the Prefect flows, against an OpenAI-compatible server with API-like
latency (lognormal, median 1.5 s, sigma 0.8) and 5% transient faults, at concurrency 64.

    python -m benchmarks.llm_stage_bench [--queries 2000] [--samples 2000]
        [--concurrency 64] [--median 1.5] [--sigma 0.8] [--fault-rate 0.05]

Per run it prints the wall time, the ideal (the server's summed latencies, as the server
reports them, / concurrency), their ratio, the requests the server received, and the
calls the rows made and took from the call store. Then each stage again with 25% more
input (requests against the new rows' own calls), again identically (Prefect's cache:
zero requests), and forced (every task recomputed, every answer from the call store:
zero requests). The server runs in its own process; the work directory is
``vpo-work/bench/llm-stage`` (emptied first). ``--simulate`` prints instead the floor a
zero-overhead client reaches with the same latencies (a discrete-event simulation).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from vpo_core.workdir import WorkDir, prefect_env

WORK = Path("vpo-work/bench/llm-stage")
SHARD = 500


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(port: int, since: float = 0.0) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v1/stats?since={since}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _wait(port: int) -> None:
    deadline = time.time() + 30
    while True:
        try:
            _stats(port)
            return
        except OSError:
            if time.time() > deadline:
                raise RuntimeError("the benchmark server did not start") from None
            time.sleep(0.2)


def _samples(n: int, work: WorkDir) -> Any:
    """``n`` samples (4 per query) of real bundled queries, as the sample stage writes."""
    import polars as pl

    from vpo_core.curate.sources import bundled_queries
    from vpo_core.tables import write_table

    queries = bundled_queries()  # ids as curate makes them: new queries interleave
    rows = [{"query_id": hashlib.sha256(queries[-1 - i].encode()).hexdigest()[:16],
             "query": queries[-1 - i], "sample_index": j,
             "prompt": f"{queries[-1 - i].strip()}, cinematic shot {j + 1}, natural light, "
                       "smooth camera movement, rich textures and detailed surroundings.",
             "status": "ok", "model": "bench", "seed": j}
            for i in range(n // 4 + 1) for j in range(4)][:n]
    return write_table(pl.DataFrame(rows), work.root / "bench-input" / f"samples-{n}.parquet",
                       "samples")


class Bench:
    def __init__(self, args: argparse.Namespace, port: int, work: WorkDir) -> None:
        self.args, self.port, self.work = args, port, work
        self.rows: list[list[str]] = []
        self.overheads: list[str] = []

    def config(self, sft: int) -> Any:
        from vpo_core.config import load_config

        judge = {"model": "openai/gpt-4o-mini", "api_base": f"http://127.0.0.1:{self.port}/v1",
                 "concurrency": self.args.concurrency, "timeout_s": 60.0, "max_retries": 8,
                 "retry_base_s": 0.5, "max_backoff_s": 10.0, "max_tokens": 256,
                 "parse_mode": "strict"}
        return load_config("cpu-tiny", {
            "work_dir": str(self.work.root), "judge": judge, "curate.input": "bundled",
            "curate.split": {"sft": sft, "dpo": 4, "eval": 4},
            "curate.safety.llm_recheck": False, "sft_data.shard_size": SHARD,
            "text_feedback.shard_size": SHARD})

    def measure(self, label: str, run: Any, table: str) -> dict[str, Any]:
        from vpo_core.tables import read_table

        before = _stats(self.port)
        start, clock = time.perf_counter(), time.monotonic()
        out = run()
        wall, end = time.perf_counter() - start, time.monotonic()
        after = _stats(self.port, since=clock)
        requests = after["requests"] - before["requests"]
        if requests:  # the flow's own time before the first request and after the last answer
            self.overheads.append(f"{label}: first request after "
                                  f"{after['first_arrival'] - clock:.1f} s, flow done "
                                  f"{end - after['last_answer']:.1f} s after the last answer")
        ideal = (after["latency_total"] - before["latency_total"]) / self.args.concurrency
        df = read_table(out[table])
        figures = {"wall": wall, "ideal": ideal, "requests": requests,
                   "calls": int(df["calls"].sum()),
                   "made": int((df["calls"] - df["cached_calls"]).sum()),
                   "cached": int(df["cached_calls"].sum()), "rows": df.height, "df": df}
        self.rows.append([label, f"{wall:.1f}", f"{ideal:.1f}" if ideal else "-",
                          f"{wall / ideal:.3f}" if ideal else "-", f"{requests:,}",
                          f"{figures['made']:,}", f"{figures['cached']:,}"])
        print(f"  {label}: {wall:.1f} s, {requests:,} requests", flush=True)
        return figures

    def print_table(self) -> None:
        head = ["run", "wall s", "ideal s", "x ideal", "requests", "calls made", "from store"]
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(len(head))]
        for row in [head, *self.rows]:
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def _incremental(label: str, before: dict[str, Any], after: dict[str, Any], key: str
                 ) -> str:
    import polars as pl

    old = before["df"][key].unique().implode()
    new = after["df"].filter(~pl.col(key).is_in(old))
    own = int(new["calls"].sum())
    per_call = before["requests"] / before["made"]         # attempts per call (faults)
    return (f"{label}: {new.height:,} new rows whose own calls are {own:,}; the run made "
            f"{after['made']:,} calls ({after['made'] / own:.3f}x) and the server saw "
            f"{after['requests']:,} requests ({after['requests'] / (own * per_call):.3f}x "
            f"the new rows' calls at the first run's {per_call:.3f} requests per call)")


def simulate(chains: int, extra: int, policy: str, concurrency: int, median: float,
             sigma: float, seed: int) -> float:
    """Wall time / ideal of ``chains`` chains of 1 + ``extra`` calls (plus one more for half
    of them, like a refinement) with lognormal latencies, no faults and no overhead: the
    floor any client reaches. ``policy``: 'step' (queued calls in step order, as the
    engine serves them) or 'oldest' (the next call of an older chain first)."""
    import heapq
    import math
    import random

    rng, steps = random.Random(seed), random.Random(seed + 1)
    needed = [1 + extra + (steps.random() < 0.5) for _ in range(chains)]
    queue = [((0, c) if policy == "step" else (c,), c) for c in range(chains)]
    heapq.heapify(queue)
    done, running, now, served = [0] * chains, [], 0.0, 0.0
    while queue or running:
        while queue and len(running) < concurrency:
            _, c = heapq.heappop(queue)
            latency = rng.lognormvariate(math.log(median), sigma)
            served += latency
            heapq.heappush(running, (now + latency, c))
        now, c = heapq.heappop(running)
        done[c] += 1
        if done[c] < needed[c]:
            heapq.heappush(queue, ((done[c], c) if policy == "step" else (c,), c))
    return now / (served / concurrency)


def print_simulation(args: argparse.Namespace) -> None:
    import statistics

    print(f"== simulated floor (2,000 chains, concurrency {args.concurrency}, lognormal "
          f"median {args.median} s, sigma {args.sigma}, 30 seeds): mean / max x ideal")
    for stage, extra in (("sft-data (generate, critique, refine for half)", 1),
                         ("text-feedback (critique, refine for half)", 0)):
        for policy in ("step", "oldest"):
            ratios = [simulate(2000, extra, policy, args.concurrency, args.median,
                               args.sigma, seed) for seed in range(30)]
            print(f"  {stage}, {policy} first: {statistics.mean(ratios):.3f} / "
                  f"{max(ratios):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--median", type=float, default=1.5)
    parser.add_argument("--sigma", type=float, default=0.8)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--simulate", action="store_true",
                        help="only print the simulated floor of the two queue policies")
    args = parser.parse_args()
    if args.simulate:
        print_simulation(args)
        return
    shutil.rmtree(WORK, ignore_errors=True)
    work = WorkDir.at(WORK).create()
    os.environ.update(prefect_env(work))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "vpo_core.testing.openai_server", "--port", str(port),
         "--latency", str(args.median), "--latency-sigma", str(args.sigma),
         "--fault-rate", str(args.fault_rate), "--faults", "rate_limit,server_error",
         "--retry-after", "1.0", "--seed", "1"])
    try:
        _wait(port)
        run(args, port, work)
    finally:
        server.terminate()
        server.wait()


def run(args: argparse.Namespace, port: int, work: WorkDir) -> None:
    from flows.curate import curate_flow
    from flows.sft_data import sft_data_flow
    from flows.text_feedback import text_feedback_flow
    from vpo_core.workdir import activate

    activate(work.root)
    bench = Bench(args, port, work)
    grown = args.queries + args.queries // 4
    print(f"== server: lognormal latency (median {args.median} s, sigma {args.sigma}), "
          f"{args.fault_rate:.0%} transient faults; concurrency {args.concurrency}; "
          f"shards of {SHARD}", flush=True)
    queries = {n: curate_flow(bench.config(n))["queries"] for n in (args.queries, grown)}
    sft = {n: bench.config(n) for n in (args.queries, grown)}
    first = bench.measure(f"sft-data, {args.queries:,} queries",
                          lambda: sft_data_flow(sft[args.queries], queries=queries[args.queries]),
                          "sft_examples")
    more = bench.measure(f"sft-data, {grown:,} queries (+25%)",
                         lambda: sft_data_flow(sft[grown], queries=queries[grown]),
                         "sft_examples")
    bench.measure(f"sft-data, {grown:,} queries, identical",
                  lambda: sft_data_flow(sft[grown], queries=queries[grown]), "sft_examples")
    bench.measure(f"sft-data, {grown:,} queries, forced",
                  lambda: sft_data_flow(sft[grown], force=True, queries=queries[grown]),
                  "sft_examples")
    grown_samples = args.samples + args.samples // 4
    samples = {n: _samples(n, work) for n in (args.samples, grown_samples)}
    tf = sft[args.queries]
    tf_first = bench.measure(f"text-feedback, {args.samples:,} samples",
                             lambda: text_feedback_flow(tf, samples=samples[args.samples]),
                             "critiques")
    tf_more = bench.measure(
        f"text-feedback, {grown_samples:,} samples (+25%)",
        lambda: text_feedback_flow(tf, samples=samples[grown_samples]), "critiques")
    bench.measure(f"text-feedback, {grown_samples:,} samples, identical",
                  lambda: text_feedback_flow(tf, samples=samples[grown_samples]), "critiques")
    bench.measure(f"text-feedback, {grown_samples:,} samples, forced",
                  lambda: text_feedback_flow(tf, force=True, samples=samples[grown_samples]),
                  "critiques")
    print()
    bench.print_table()
    print("(calls made / from store: as counted by the rows when they were computed; the "
          "identical runs' rows come from Prefect's cache and made no call)")
    print()
    print("\n".join(bench.overheads))
    print()
    print(_incremental("sft-data +25%", first, more, "query_id"))
    tf_first["df"] = tf_first["df"].with_columns(
        key=tf_first["df"]["query_id"] + "#" + tf_first["df"]["sample_index"].cast(str))
    tf_more["df"] = tf_more["df"].with_columns(
        key=tf_more["df"]["query_id"] + "#" + tf_more["df"]["sample_index"].cast(str))
    print(_incremental("text-feedback +25%", tf_first, tf_more, "key"))


if __name__ == "__main__":
    main()
