"""Two processes sharing one Redis call store: no call made twice.

    python -m benchmarks.store_bench [--queries 400] [--concurrency 64] [--median 1.5]
        [--sigma 0.8]

Each process runs sft-data's chains (generate -> critique -> refine, the function its
Prefect task calls: :func:`vpo_core.sft_data.stage.run_shard`) on the same bundled
queries against the project's fake OpenAI server with lognormal latency, all processes
sharing a real ``redis-server`` (started on a free port in a temporary folder). Three
runs, each on an emptied store: one process alone; two processes at once (the claim in
Redis makes each wait for the answers the other is getting); two processes without
claims, as the store was before (each looks up the store, misses, and pays). Printed per
run: the wall time (start of the processes to the last one's end), the requests the
server received, the distinct calls among them (whole conversations), the calls made more
than once, and each process's calls answered from the store.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

CHILD = "benchmarks.store_bench"


def child(api_base: str, url: str, queries: int, concurrency: int, claims: bool,
          out: str) -> None:
    """One process: sft-data's chains on the first ``queries`` bundled queries."""
    from vpo_core.config import LLMConfig, SftDataConfig
    from vpo_core.curate.sources import bundled_queries
    from vpo_core.llm import store
    from vpo_core.sft_data.stage import run_shard
    from vpo_core.tables import read_table

    if not claims:  # the store as it was: look up, miss, pay
        store.RedisStore.claim = store.SQLiteStore.claim
    rows = [{"query_id": hashlib.sha256(q.encode()).hexdigest()[:16], "query": q}
            for q in bundled_queries()[:queries]]
    judge = LLMConfig(model="openai/gpt-4o-mini", api_base=api_base, call_store=url,
                      concurrency=concurrency, timeout_s=60.0, max_tokens=256,
                      parse_mode="strict")
    start = time.perf_counter()
    done = run_shard(rows, 0, judge, SftDataConfig(), Path(out))
    df = read_table(done["examples"])
    print(orjson.dumps({"seconds": time.perf_counter() - start,
                        "calls": int(df["calls"].sum()),
                        "cached": int(df["cached_calls"].sum())}).decode(), flush=True)


def measure(label: str, processes: int, claims: bool, args: argparse.Namespace, fake: Any,
            api_base: str, url: str, folder: Path) -> list[str]:
    import redis

    redis.Redis.from_url(url).flushall()
    fake.requests.clear()
    fake.conversations.clear()
    start = time.perf_counter()
    procs = [subprocess.Popen(
        [sys.executable, "-m", CHILD, "--child", api_base, url, str(args.queries),
         str(args.concurrency), str(int(claims)), str(folder / f"{label}-{i}")],
        stdout=subprocess.PIPE, text=True) for i in range(processes)]
    outs = [orjson.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{label}: a process failed")
    requests = sum(fake.conversations.values())
    distinct = len(fake.conversations)
    twice = sum(1 for n in fake.conversations.values() if n > 1)
    print(f"  {label}: {wall:.1f} s, {requests:,} requests", flush=True)
    return [label, f"{wall:.1f}", f"{requests:,}", f"{distinct:,}", f"{twice:,}",
            " / ".join(f"{o['cached']:,} of {o['calls']:,}" for o in outs),
            " / ".join(f"{o['seconds']:.1f}" for o in outs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--median", type=float, default=1.5)
    parser.add_argument("--sigma", type=float, default=0.8)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        api_base, url, queries, concurrency, claims, out = args.child
        child(api_base, url, int(queries), int(concurrency), claims == "1", out)
        return

    from vpo_core.testing.openai_server import FakeOpenAI, ServerThread
    from vpo_core.testing.redis_server import RedisServer

    fake = FakeOpenAI(latency=args.median, latency_sigma=args.sigma, seed=1)
    with tempfile.TemporaryDirectory(prefix="vpo-store-bench-") as tmp, \
            ServerThread(fake) as srv:
        folder = Path(tmp)
        with RedisServer(folder) as url:
            print(f"== sft-data chains on {args.queries:,} queries per process, concurrency "
                  f"{args.concurrency} per process, lognormal latency (median {args.median}"
                  f" s, sigma {args.sigma}), one redis-server", flush=True)
            rows = [measure("one process", 1, True, args, fake, srv.api_base, url, folder),
                    measure("two processes", 2, True, args, fake, srv.api_base, url, folder),
                    measure("two processes, no claims", 2, False, args, fake, srv.api_base,
                            url, folder)]
    head = ["run", "wall s", "requests", "distinct calls", "made twice",
            "from store (per process)", "process s"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print()
    for row in [head, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))


if __name__ == "__main__":
    main()
