"""The judge LLM's re-check of safety labels (the paper re-evaluates the queries Detoxify
flags with GPT-4o).

Only the flagged queries the splits can use are asked: in split order (the same seeded
ranking :mod:`vpo_core.curate.split` uses), ``recheck_oversample`` times as many as the
splits need. A "No" from the judge overrules the rules (source ``llm``); a "Yes" confirms
them (``+llm``); anything else leaves the label as it was and says why in
``safety_check``.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.config import LLMConfig, SafetyConfig, SplitConfig
from vpo_core.curate.split import SPLITS, order_keys
from vpo_core.llm.client import LLMClient, LLMRequest, raise_if_outage
from vpo_core.prompts.parsing import parse_verdict
from vpo_core.prompts.templates import safety_messages
from vpo_core.tables import DataRef, read_table, write_table


def to_check(df: pl.DataFrame, safety: SafetyConfig, split: SplitConfig, seed: int
             ) -> pl.DataFrame:
    """The flagged rows to ask about, in split order."""
    need = sum(math.ceil(getattr(split, s) * split.safety_share) for s in SPLITS)
    flagged = df.filter(pl.col("safety"))
    order = order_keys(flagged.get_column("query_id"), seed).argsort()
    return flagged[order].head(math.ceil(need * safety.recheck_oversample))


def recheck(labelled_ref: DataRef, safety: SafetyConfig, split: SplitConfig, seed: int,
            judge: LLMConfig, out_dir: Path, api_key: str | None = None,
            model_cache: str | None = None, work_root: str | Path | None = None
            ) -> dict[str, Any]:
    """Ask the judge about the flagged queries (answers already in the call store of
    ``work_root`` are not asked again); write the re-labelled table."""
    df = read_table(labelled_ref, "labelled")
    asked = to_check(df, safety, split, seed)
    results = LLMClient(judge, api_key, model_cache, work_root).run(
        [LLMRequest(qid, safety_messages(q)) for qid, q in
         asked.select("query_id", "query").iter_rows()])
    raise_if_outage(results, "safety re-check")
    checks = {}
    for r in results:
        parsed = parse_verdict(r.text, "unsafe", judge.parse_mode == "lenient") if r.ok \
            else None
        checks[r.id] = (r.status if parsed is None else
                        {"yes": "confirmed", "no": "overruled"}.get(parsed.value or "",
                                                                     parsed.status))
    verdicts = pl.DataFrame({"query_id": list(checks), "_check": list(checks.values())},
                            schema={"query_id": pl.String, "_check": pl.String})
    out = df.join(verdicts, on="query_id", how="left", maintain_order="left").with_columns(
        (pl.col("safety") & (pl.col("_check") != "overruled").fill_null(True)).alias("safety"),
        pl.when(pl.col("_check") == "overruled").then(pl.lit("llm"))
        .when(pl.col("_check") == "confirmed").then(pl.col("safety_source") + "+llm")
        .otherwise(pl.col("safety_source")).alias("safety_source"),
        pl.when(pl.col("_check") == "overruled")
        .then(pl.concat_str(pl.lit("llm: safe; rules said "), pl.col("safety_detail")))
        .otherwise(pl.col("safety_detail")).alias("safety_detail"),
        pl.col("_check").alias("safety_check"),
    ).drop("_check")
    ref = write_table(out, out_dir / "labelled.parquet", "labelled")
    return {"labelled": ref, "stats": {
        "asked": len(results), "flagged": int(df["safety"].sum()),
        "outcomes": dict(Counter(checks.values())),
        "tokens": sum(r.prompt_tokens + r.completion_tokens for r in results),
        "calls_made": sum(not r.cached for r in results),
        "cached_calls": sum(r.cached for r in results),
        "cost": sum(r.cost for r in results),
        "cost_saved": sum(r.cost for r in results if r.cached)}}
