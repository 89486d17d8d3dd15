"""LLM client benchmark: 2,000 calls to a local OpenAI-compatible server answering in
100 ms, at concurrency 64, beside the paper's released-script style (20 worker processes,
each sending its requests one by one), plus the embedded model's throughput.

    python -m benchmarks.llm_bench [--calls 2000] [--latency 0.1] [--concurrency 64]

The server runs in its own process (vpo_core.testing.openai_server), so client and
server do not share an interpreter. Ideal wall time = calls x latency / concurrency.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import subprocess
import sys
import time

import requests

from vpo_core.config import LLMConfig
from vpo_core.llm.client import LLMClient, LLMRequest

PAPER_WORKERS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            requests.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                          json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                          timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError("the benchmark server did not start")


def _messages(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Write a video prompt for query number {i}."}]
            for i in range(n)]


def _paper_worker(args: tuple[str, list]) -> int:
    """One worker of the released scripts' pool: requests.post, one call after another."""
    url, batch = args
    done = 0
    for messages in batch:
        r = requests.post(url, json={"model": "gpt-4o", "messages": messages,
                                     "temperature": 0.7}, timeout=60)
        done += bool(r.json()["choices"][0]["message"]["content"])
    return done


def paper_style(api_base: str, calls: int) -> tuple[float, int]:
    messages = _messages(calls)
    sublists = [messages[i::PAPER_WORKERS] for i in range(PAPER_WORKERS)]
    start = time.perf_counter()
    with multiprocessing.Pool(PAPER_WORKERS) as pool:
        done = sum(pool.map(_paper_worker, [(f"{api_base}/chat/completions", s)
                                            for s in sublists]))
    return time.perf_counter() - start, done


def ours(api_base: str, calls: int, concurrency: int, transport: str) -> tuple[float, int]:
    cfg = LLMConfig(model="openai/bench", api_base=api_base, transport=transport,
                    concurrency=concurrency, max_retries=0, timeout_s=30)
    client = LLMClient(cfg)
    client.run([LLMRequest("warm", _messages(1)[0])])       # imports and first connection
    requests_ = [LLMRequest(str(i), m) for i, m in enumerate(_messages(calls))]
    start = time.perf_counter()
    results = client.run(requests_)
    return time.perf_counter() - start, sum(r.ok for r in results)


def embedded(n: int = 16) -> None:
    from vpo_core.prompts.templates import critique_messages

    cfg = LLMConfig(max_tokens=128)
    client = LLMClient(cfg, model_cache="vpo-work/models")
    client.run([LLMRequest("warm", _messages(1)[0])])
    reqs = [LLMRequest(str(i), critique_messages(f"a cat number {i} playing piano",
                                                 f"A cat {i} plays a grand piano in a sunlit "
                                                 "room, cinematic, soft light."))
            for i in range(n)]
    start = time.perf_counter()
    results = client.run(reqs)
    wall = time.perf_counter() - start
    tokens = sum(r.completion_tokens for r in results)
    print(f"\n== embedded SmolLM2-135M (critique prompts, max 128 tokens, batch {cfg.concurrency})")
    print(f"{n} answers in {wall:.1f} s: {60 * n / wall:.1f} answers/min, "
          f"{tokens / wall:.1f} generated tokens/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args()
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "vpo_core.testing.openai_server",
                               "--port", str(port), "--latency", str(args.latency)])
    try:
        _wait(port)
        api_base = f"http://127.0.0.1:{port}/v1"
        ideal = args.calls * args.latency / args.concurrency
        print(f"== {args.calls:,} calls, server latency {args.latency * 1000:.0f} ms "
              f"(ideal at concurrency {args.concurrency}: {ideal:.2f} s; target <= 1.15x)")
        print(f"{'client':44s}{'wall s':>8s}{'x ideal':>9s}{'ok':>7s}")
        for name, run in [
            (f"ours, http transport, concurrency {args.concurrency}",
             lambda: ours(api_base, args.calls, args.concurrency, "http")),
            (f"ours, litellm transport, concurrency {args.concurrency}",
             lambda: ours(api_base, args.calls, args.concurrency, "litellm")),
            (f"paper-style pool, {PAPER_WORKERS} sequential workers",
             lambda: paper_style(api_base, args.calls)),
        ]:
            wall, ok = run()
            print(f"{name:44s}{wall:8.2f}{wall / ideal:9.2f}{ok:7d}")
    finally:
        server.terminate()
        server.wait()
    if not args.skip_embedded:
        embedded()


if __name__ == "__main__":
    main()
