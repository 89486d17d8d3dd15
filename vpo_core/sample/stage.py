"""K prompts per DPO query from the SFT model (paper §3.2: K = 4, temperature 0.9,
top-p 0.9).

A query's samples are drawn with a seed of (seed, query id) alone, so a resumed or
re-sharded run draws the same samples whatever the batch. The transformers backend puts
``sample.batch_size`` queries (K sequences each) in one ``generate`` call, every sequence
with its own random stream (:class:`vpo_core.optimizer.Optimizer`); the vLLM backend
(``sample.backend: vllm``) keeps one engine per worker process and submits a whole shard
at once; the ``openai-server`` backend (:mod:`vpo_core.sample.served`) sends each sample
as a request to a served policy. A sample cut at ``max_new_tokens`` is kept with status
``truncated``. When a batched call fails, its queries are generated one by one so that
only the failing query keeps K rows with the error as their status (a served sample that
failed keeps its own error status).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.config import SampleConfig
from vpo_core.errors import ConfigError, StageFailed, TransientError
from vpo_core.optimizer import Generation, Optimizer, Sampling, VLLMOptimizer, stable_seed
from vpo_core.sample.served import served_generator
from vpo_core.tables import DataRef, concat_tables, polars_schema, write_table

# (queries, their seeds) -> K generations (or a failed sample's status) per query
Generate = Callable[[Sequence[str], Sequence[int]], list[list[Generation | str]]]


def query_seed(seed: int, query_id: str) -> int:
    """A stable 63-bit seed per query (the same in every process)."""
    return stable_seed(seed, query_id)


def _generator(opt: Optimizer | VLLMOptimizer, cfg: SampleConfig) -> Generate:
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens,
                        repetition_penalty=cfg.repetition_penalty,
                        no_repeat_ngram_size=cfg.no_repeat_ngram_size)

    def generate(queries: Sequence[str], seeds: Sequence[int]) -> list[list[Generation]]:
        return opt.sample(queries, cfg.k, sampling, seeds)
    return generate


def transformers_generator(model: str, cfg: SampleConfig) -> Generate:
    """K samples per query, ``cfg.batch_size`` queries per ``generate`` call."""
    return _generator(Optimizer(model, batch_size=cfg.batch_size * cfg.k), cfg)


def vllm_generator(model: str, cfg: SampleConfig) -> Generate:
    """A whole shard in one vLLM call (``n = K``, a seed per query), with the engine kept
    for the worker's next shards."""
    try:
        return _generator(VLLMOptimizer(model), cfg)
    except ConfigError as exc:
        raise ConfigError(f"sample.backend: vllm: {exc} — or use sample.backend: "
                          "transformers") from exc


GENERATORS: dict[str, Callable[[str, SampleConfig], Generate]] = {
    "transformers": transformers_generator, "vllm": vllm_generator,
    "openai-server": served_generator}


def _status(g: Generation) -> str:
    return "empty" if not g.text else "truncated" if g.truncated else "ok"


def _generate_all(generate: Generate, queries: list[str], seeds: list[int]
                  ) -> list[list[Generation | str] | str]:
    """Each query's K generations, or the error that stopped it: all queries in one call,
    then one by one if that call fails (one bad query must not cost the others their
    samples). A served policy that is down or refuses every request fails the shard, so
    that it is retried, not cached with error rows."""
    try:
        return list(generate(queries, seeds))
    except (TransientError, StageFailed):
        raise
    except Exception as exc:  # retried one by one below, where the failing query is found
        if len(queries) == 1:
            return [f"error:{type(exc).__name__}"]
    out: list[list[Generation | str] | str] = []
    for query, seed in zip(queries, seeds, strict=True):
        try:
            out.append(generate([query], [seed])[0])
        except Exception as exc:  # recorded per query; the other queries go on
            out.append(f"error:{type(exc).__name__}")
    return out


def sample_shard(rows: list[dict[str, Any]], model: str, cfg: SampleConfig, seed: int,
                 out_dir: Path, shard: int, generate: Generate | None = None
                 ) -> dict[str, Any]:
    """Sample one shard of queries; write its ``samples`` rows (K per query)."""
    start = time.perf_counter()
    generate = generate or GENERATORS[cfg.backend](model, cfg)
    seeds = [query_seed(seed, row["query_id"]) for row in rows]
    results = _generate_all(generate, [r["query"] for r in rows], seeds)
    out = []
    for row, qseed, result in zip(rows, seeds, results, strict=True):
        for i, g in enumerate([result] * cfg.k if isinstance(result, str) else result):
            ok = isinstance(g, Generation)
            out.append({**row, "sample_index": i, "prompt": (g.text or None) if ok else None,
                        "status": _status(g) if ok else g, "model": model,
                        "safety": bool(row.get("safety", False)), "seed": qseed})
    df = pl.DataFrame(out, schema=polars_schema("samples"))
    ref = write_table(df, out_dir / f"samples-{shard:05d}.parquet", "samples")
    return {"samples": ref, "stats": stats(df, time.perf_counter() - start)}


def stats(df: pl.DataFrame, seconds: float) -> dict[str, Any]:
    """Rows, queries, statuses and distinct prompts per query."""
    vc = df.get_column("status").value_counts()
    distinct = (df.filter(pl.col("status") == "ok").group_by("query_id")
                .agg(pl.col("prompt").n_unique()).get_column("prompt"))
    return {"rows": df.height, "queries": df["query_id"].n_unique(),
            "status": dict(zip(vc["status"], vc["count"], strict=True)),
            "distinct_per_query": round(float(distinct.mean()), 2) if len(distinct) else 0.0,
            "seconds": round(seconds, 2)}


def merge(shards: list[DataRef], out_dir: Path) -> dict[str, Any]:
    """Concatenate the shards into ``samples.parquet``."""
    df = concat_tables(shards, "samples")
    ref = write_table(df, out_dir / "samples.parquet", "samples")
    return {"samples": ref, "stats": stats(df, 0.0)}
