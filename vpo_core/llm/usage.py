"""What a row's LLM calls used and cost, and what the call store saved: the columns the
LLM stages write per row, and their totals for the stage summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from vpo_core.llm.client import LLMResult

USAGE_COLUMNS = ("prompt_tokens", "completion_tokens", "cost", "cost_saved", "calls",
                 "cached_calls")


def row_usage(results: Sequence[LLMResult]) -> dict[str, Any]:
    """Tokens and ``cost`` of every answer (as first made); ``cost_saved`` and
    ``cached_calls``: the part the call store answered without a request; the first
    error's text."""
    return {
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
        "cost": sum(r.cost for r in results),
        "cost_saved": sum(r.cost for r in results if r.cached),
        "calls": len(results), "cached_calls": sum(r.cached for r in results),
        "error": next((r.error for r in results if r.error), None),
    }


def usage_stats(df: pl.DataFrame) -> dict[str, Any]:
    """Totals of the usage columns of a table."""
    totals = {c: df[c].sum() for c in USAGE_COLUMNS}
    return {"prompt_tokens": int(totals["prompt_tokens"]),
            "completion_tokens": int(totals["completion_tokens"]),
            "cost": float(totals["cost"]), "cost_saved": float(totals["cost_saved"]),
            "calls": int(totals["calls"]), "cached_calls": int(totals["cached_calls"]),
            "calls_made": int(totals["calls"] - totals["cached_calls"])}


def usage_markdown(stats: dict[str, Any]) -> list[str]:
    """Rows of a markdown ``| measure | value |`` table."""
    return [
        f"| LLM calls made | {stats['calls_made']:,} |",
        f"| calls answered from the call store | {stats['cached_calls']:,} |",
        f"| tokens (prompt + completion) | {stats['prompt_tokens']:,} + "
        f"{stats['completion_tokens']:,} |",
        f"| cost of the answers (USD, where litellm knows it) | {stats['cost']:.4f} |",
        f"| of which saved by the call store (USD) | {stats['cost_saved']:.4f} |",
    ]
