"""Cutting a split of the ``queries`` table into shards: each shard is one cached task of
a per-item stage, so a crash loses at most the shards in flight."""

from __future__ import annotations

from typing import Any

import polars as pl

from vpo_core.tables import DataRef, read_table


def split_shards(queries: DataRef, split: str, size: int) -> list[list[dict[str, Any]]]:
    """Rows {query_id, query, safety} of one split, in query-id order, ``size`` per
    shard (the principle checks spare a safety query's words)."""
    rows = (read_table(queries, "queries").filter(pl.col("split") == split)
            .sort("query_id").select("query_id", "query", "safety").to_dicts())
    return chunks(rows, size)


def chunks(rows: list[Any], size: int) -> list[list[Any]]:
    """Consecutive pieces of ``size`` rows (the last one shorter)."""
    return [rows[i:i + size] for i in range(0, len(rows), size)]
