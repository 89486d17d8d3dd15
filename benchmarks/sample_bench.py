"""Sampling benchmark: K prompts per query from the bundled SmolLM2-135M on CPU, the way the
sample stage did it before batching (one ``generate`` per query, ``num_return_sequences=K``,
the global seed) beside the batched sampler it uses now (``Optimizer.sample``:
``batch_size`` queries x K sequences per ``generate`` call, each sequence with its own
seeded random stream, the instruction's shared prefix computed once).

    python -m benchmarks.sample_bench [--queries 16] [--k 4] [--max-new-tokens 64]
                                      [--batch-sizes 1 4 8 16] [--threads 2]

Queries: the first bundled real queries of 3-40 words. Each figure is one pass over the
same queries in this process (torch threads = ``--threads``), after a warm-up: wall time,
samples/s, generated tokens/s (tokens up to the end of each answer), process CPU time, and
the share of samples cut at ``max_new_tokens`` (``truncated``). The batched runs must give
every query the same samples whatever the batch size; the benchmark checks and prints it.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from vpo_core.curate.sources import bundled_queries
from vpo_core.optimizer import Optimizer, Sampling
from vpo_core.prompts.templates import optimizer_messages
from vpo_core.sample.stage import query_seed


def per_query(opt: Optimizer, queries: list[str], k: int, sampling: Sampling,
              seeds: list[int]) -> list[list[tuple[str, int, bool]]]:
    """The sample stage before batching: one generate per query, K return sequences."""
    import torch

    tok, out = opt.tokenizer, []
    stop = opt._stop
    for query, seed in zip(queries, seeds, strict=True):
        text = tok.apply_chat_template(optimizer_messages(query), tokenize=False,
                                       add_generation_prompt=True)
        enc = tok([text], return_tensors="pt", add_special_tokens=False)
        torch.manual_seed(seed)
        with torch.inference_mode():
            ids = opt.model.generate(
                **enc, max_new_tokens=sampling.max_new_tokens, do_sample=True,
                temperature=sampling.temperature, top_p=sampling.top_p, top_k=None,
                num_return_sequences=k, use_cache=True, pad_token_id=tok.pad_token_id)
        rows = []
        for row in ids[:, enc["input_ids"].shape[1]:].tolist():
            ended = next((n for n, t in enumerate(row) if t in stop), None)
            tokens = row if ended is None else row[:ended]
            rows.append((tok.decode(tokens, skip_special_tokens=True).strip(), len(tokens),
                         ended is None))
        out.append(rows)
    return out


def batched(opt: Optimizer, queries: list[str], k: int, sampling: Sampling,
            seeds: list[int]) -> list[list[tuple[str, int, bool]]]:
    return [[(g.text, g.tokens, g.truncated) for g in gens]
            for gens in opt.sample(queries, k, sampling, seeds)]


def measure(name: str, fn: Any, *args: Any) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    flat = [s for per in out for s in per]
    return {"name": name, "out": out, "wall": wall, "cpu": cpu, "samples": len(flat),
            "tokens": sum(t for _, t, _ in flat),
            "truncated": sum(cut for _, _, cut in flat) / len(flat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--models-dir", default="vpo-work/models")
    args = parser.parse_args()

    import torch

    from vpo_core.models.bundled import bundled_model_dir

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    model = str(bundled_model_dir(args.models_dir))
    queries = [q for q in bundled_queries() if 3 <= len(q.split()) <= 40][:args.queries]
    seeds = [query_seed(0, f"q{i}") for i in range(len(queries))]
    sampling = Sampling(0.9, 0.9, args.max_new_tokens)
    opt = Optimizer(model)
    opt.sample(queries[:1], 1, Sampling(0.9, 0.9, 2), seeds[:1])          # warm-up
    per_query(opt, queries[:1], 1, Sampling(0.9, 0.9, 2), seeds[:1])
    runs = [measure("per query (before)", per_query, opt, queries, args.k, sampling, seeds)]
    for size in args.batch_sizes:
        opt.batch_size = size * args.k
        runs.append(measure(f"batched, {size} queries/call", batched, opt, queries, args.k,
                            sampling, seeds))

    base = runs[0]["samples"] / runs[0]["wall"]
    print(f"{len(queries)} queries x K={args.k}, max_new_tokens={args.max_new_tokens}, "
          f"temperature 0.9, top-p 0.9, {args.threads} threads, SmolLM2-135M fp32; 1-min "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    print("| run | wall s | samples/s | x per-query | tokens/s | CPU s | truncated |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        rate = r["samples"] / r["wall"]
        print(f"| {r['name']} | {r['wall']:.1f} | {rate:.2f} | {rate / base:.2f} | "
              f"{r['tokens'] / r['wall']:.1f} | {r['cpu']:.1f} | {r['truncated']:.0%} |")
    same = all(r["out"] == runs[1]["out"] for r in runs[2:])
    print(f"\nbatched samples identical across batch sizes {args.batch_sizes}: "
          f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
