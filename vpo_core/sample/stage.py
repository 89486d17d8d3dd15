"""K prompts per DPO query from the SFT model (paper §3.2: K = 4, temperature 0.9,
top-p 0.9).

Each query's samples come from one generate call seeded by (seed, query id) alone, so a
resumed or re-sharded run draws the same samples. The transformers backend runs here; the
vLLM backend is used when vLLM is installed and ``sample.backend: vllm`` is set. A query
whose generation fails keeps K rows with the error as their status.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.config import SampleConfig
from vpo_core.errors import ConfigError
from vpo_core.optimizer import Optimizer, Sampling
from vpo_core.progress import Progress
from vpo_core.tables import DataRef, concat_tables, polars_schema, write_table

Generate = Callable[[str, int], list[str]]


def query_seed(seed: int, query_id: str) -> int:
    """A stable 63-bit seed per query (the same in every process)."""
    digest = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def transformers_generator(model: str, cfg: SampleConfig) -> Generate:
    """K samples per call with transformers."""
    opt = Optimizer(model)

    def generate(query: str, seed: int) -> list[str]:
        return opt.sample(query, cfg.k, Sampling(cfg.temperature, cfg.top_p,
                                                 cfg.max_new_tokens, seed))
    return generate


def vllm_generator(model: str, cfg: SampleConfig) -> Generate:
    """K samples per call with vLLM (``n=K`` and a per-request seed)."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as exc:
        raise ConfigError("sample.backend: vllm needs vLLM installed (pip install vllm on a "
                          "GPU machine) — or use sample.backend: transformers") from exc
    from vpo_core.prompts.templates import optimizer_messages

    llm = LLM(model=model, seed=0)

    def generate(query: str, seed: int) -> list[str]:
        params = SamplingParams(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_new_tokens, seed=seed % 2**31)
        [out] = llm.chat([optimizer_messages(query)], params, use_tqdm=False)
        return [c.text.strip() for c in out.outputs]
    return generate


GENERATORS: dict[str, Callable[[str, SampleConfig], Generate]] = {
    "transformers": transformers_generator, "vllm": vllm_generator}


def sample_shard(rows: list[dict[str, str]], model: str, cfg: SampleConfig, seed: int,
                 out_dir: Path, shard: int, generate: Generate | None = None
                 ) -> dict[str, Any]:
    """Sample one shard of queries; write its ``samples`` rows (K per query)."""
    start = time.perf_counter()
    generate = generate or GENERATORS[cfg.backend](model, cfg)
    out, progress = [], Progress(f"sample shard {shard}: queries", len(rows))
    for row in rows:
        qseed = query_seed(seed, row["query_id"])
        try:
            prompts, status = generate(row["query"], qseed), None
        except Exception as exc:  # recorded per query; the other queries go on
            prompts, status = [None] * cfg.k, f"error:{type(exc).__name__}"
        for i, prompt in enumerate(prompts):
            out.append({**row, "sample_index": i, "prompt": prompt or None,
                        "status": status or ("ok" if prompt else "empty"),
                        "model": model, "seed": qseed})
        progress.step()
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
