"""Text-level feedback on the sampled prompts (paper §3.3): the judge critiques each
sample with the Figure 8 template; samples judged "No" are refined, and each refinement
makes a text pair (refined ≻ original) for D_text. Samples judged "Yes" go on to rendering.

As in the official code, a refinement that spans several lines is not paired (the judge
wrote something other than one prompt). Every sample stays in ``critiques`` with the
status of each step.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.config import LLMConfig
from vpo_core.errors import StageFailed
from vpo_core.llm.client import LLMClient, LLMRequest, LLMResult
from vpo_core.prompts.parsing import Parsed, extract_prompt, parse_verdict
from vpo_core.prompts.templates import critique_messages, refine_messages
from vpo_core.tables import DataRef, concat_tables, polars_schema, read_table, write_table

SKIPPED = "skipped"


def _key(row: dict[str, Any]) -> str:
    return f"{row['query_id']}#{row['sample_index']}"


def _status(result: LLMResult, parsed: Parsed) -> str:
    return result.status if not result.ok else parsed.status


def run_shard(samples: list[dict[str, Any]], shard: int, judge: LLMConfig, out_dir: Path,
              api_key: str | None = None, model_cache: str | None = None) -> dict[str, Any]:
    """Critique and refine one shard of samples; write its ``critiques`` and
    ``text_pairs``. Raises StageFailed (writing nothing) when every critique failed."""
    start = time.perf_counter()
    client = LLMClient(judge, api_key, model_cache)
    lenient = judge.parse_mode == "lenient"
    rows = {_key(s): {**s, "calls": []} for s in samples}
    asked = [k for k, r in rows.items() if r["status"] == "ok"]
    messages = {k: critique_messages(rows[k]["query"], rows[k]["prompt"]) for k in asked}
    results = client.run([LLMRequest(k, messages[k]) for k in asked])
    if results and not any(r.ok for r in results):
        kinds = Counter(r.status for r in results)
        raise StageFailed(f"text-feedback shard {shard}: all {len(results)} critique calls "
                          f"failed ({dict(kinds)}); first error: {results[0].error}")
    for r in results:
        parsed = parse_verdict(r.text, "judgement", lenient) if r.ok else Parsed(r.status)
        rows[r.id].update(critique=r.text, judgement=parsed.value,
                          critique_status=_status(r, parsed), calls=[r])

    failing = [k for k in asked if rows[k].get("judgement") == "no"]
    for r in client.run([LLMRequest(k, refine_messages(messages[k], rows[k]["critique"]))
                         for k in failing]):
        parsed = extract_prompt(r.text, lenient)
        status = _status(r, parsed)
        if status == "ok" and "\n" in parsed.value.strip():
            status = "multiline"
        rows[r.id]["calls"].append(r)
        rows[r.id].update(refinement=r.text, refined=parsed.value, refine_status=status)

    critiques = pl.DataFrame([_critique_row(r) for r in rows.values()],
                             schema=polars_schema("critiques"))
    pairs = (critiques.filter(pl.col("refine_status") == "ok")
             .select("query_id", "query", "sample_index", chosen="refined", rejected="prompt"))
    name = f"{shard:05d}.parquet"
    return {"critiques": write_table(critiques, out_dir / f"critiques-{name}", "critiques"),
            "text_pairs": write_table(pairs, out_dir / f"text_pairs-{name}", "text_pairs"),
            "stats": stats(critiques, time.perf_counter() - start)}


def _critique_row(row: dict[str, Any]) -> dict[str, Any]:
    calls: list[LLMResult] = row["calls"]
    return {
        "query_id": row["query_id"], "query": row["query"],
        "sample_index": row["sample_index"], "prompt": row["prompt"],
        "critique": row.get("critique"), "judgement": row.get("judgement"),
        "critique_status": row.get("critique_status", f"{SKIPPED}:sample-{row['status']}"),
        "refinement": row.get("refinement"), "refined": row.get("refined"),
        "refine_status": row.get("refine_status", SKIPPED),
        "render": row.get("judgement") == "yes",
        "prompt_tokens": sum(c.prompt_tokens for c in calls),
        "completion_tokens": sum(c.completion_tokens for c in calls),
        "cost": sum(c.cost for c in calls),
    }


def stats(df: pl.DataFrame, seconds: float) -> dict[str, Any]:
    """Verdicts, refinement outcomes, pairs and tokens of a shard (or the merged table)."""
    def counts(col: str) -> dict[str, int]:
        vc = df.get_column(col).value_counts()
        return {str(k): v for k, v in zip(vc[col], vc["count"], strict=True)}

    return {"rows": df.height, "critique": counts("critique_status"),
            "judgement": counts("judgement"), "refine": counts("refine_status"),
            "to_render": int(df["render"].sum()),
            "text_pairs": int((df["refine_status"] == "ok").sum()),
            "prompt_tokens": int(df["prompt_tokens"].sum()),
            "completion_tokens": int(df["completion_tokens"].sum()),
            "cost": float(df["cost"].sum()), "seconds": round(seconds, 2)}


def merge(shards: list[dict[str, DataRef]], out_dir: Path) -> dict[str, Any]:
    """Concatenate the shards into ``critiques.parquet`` and ``text_pairs.parquet``."""
    out: dict[str, Any] = {}
    for table in ("critiques", "text_pairs"):
        df = concat_tables([s[table] for s in shards], table)
        out[table] = write_table(df, out_dir / f"{table}.parquet", table)
    out["stats"] = stats(read_table(out["critiques"], "critiques"), 0.0)
    return out


def to_render(critiques: DataRef) -> list[dict[str, Any]]:
    """The samples judged "Yes": {query_id, query, sample_index, prompt}."""
    return (read_table(critiques, "critiques").filter(pl.col("render"))
            .select("query_id", "query", "sample_index", "prompt").to_dicts())
