"""Text-level feedback on the sampled prompts (paper §3.3): the judge critiques each
sample with the Figure 8 template; samples judged "No" are refined, and each refinement
makes a text pair (refined ≻ original) for D_text. Samples judged "Yes" go on to rendering.

As in the official code, a refinement that spans several lines is not paired (the judge
wrote something other than one prompt). Every sample goes through the principle checks
first (:mod:`vpo_core.checks`): one failing a hard check is a No without a judge call
(``critique_status`` ``check:<codes>``, its critique the checks' own) and is refined as
usual; a refinement failing one is not paired. Every sample stays in ``critiques`` with
the status of each step. Each sample runs its own chain (critique -> refine) with no barrier
between samples; answers already in the call store are not asked again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.checks import check_prompt
from vpo_core.config import ChecksConfig, LLMConfig
from vpo_core.critique import critique, step_status
from vpo_core.llm.client import Ask, LLMClient, LLMRequest, raise_if_outage
from vpo_core.llm.usage import row_usage, usage_stats
from vpo_core.prompts.parsing import extract_prompt
from vpo_core.prompts.templates import critique_messages, refine_messages
from vpo_core.tables import DataRef, concat_tables, polars_schema, read_table, write_table

SKIPPED = "skipped"


def _key(row: dict[str, Any]) -> str:
    return f"{row['query_id']}#{row['sample_index']}"


def run_shard(samples: list[dict[str, Any]], shard: int, judge: LLMConfig, out_dir: Path,
              api_key: str | None = None, model_cache: str | None = None,
              work_root: str | Path | None = None, checks: ChecksConfig | None = None
              ) -> dict[str, Any]:
    """Critique and refine one shard of samples; write its ``critiques`` and
    ``text_pairs``. When every call of a step failed, nothing is written: TransientError
    for an outage (Prefect retries), StageFailed for a permanent error."""
    start = time.perf_counter()
    client = LLMClient(judge, api_key, model_cache, work_root)
    lenient = judge.parse_mode == "lenient"

    checks = checks or ChecksConfig()
    budget = judge.prompt_max_tokens or judge.max_tokens

    async def chain(sample: dict[str, Any], ask: Ask) -> dict[str, Any]:
        row = {**sample, "calls": [], "steps": {}}
        if sample["status"] != "ok":
            return row
        safety = bool(sample.get("safety"))
        checked = check_prompt(sample["query"], sample["prompt"], checks, safety=safety)
        row.update(check_findings=[f.code for f in checked.findings],
                   checks_passed=checked.passed)
        asked = critique_messages(sample["query"], sample["prompt"])
        crit = await critique(ask, LLMRequest(_key(sample), asked), checked, lenient)
        if crit.call:
            row["calls"].append(crit.call)
            row["steps"]["critique"] = crit.call
        row.update(critique=crit.text, judgement=crit.judgement, critique_status=crit.status)
        if row["judgement"] != "no":
            return row
        ref = await ask(LLMRequest(_key(sample), refine_messages(asked, row["critique"]),
                                   max_tokens=budget))
        parsed = extract_prompt(ref.text, lenient)
        status = step_status(ref, parsed)
        if status == "ok" and "\n" in parsed.value.strip():
            status = "multiline"
        if status == "ok":
            status = check_prompt(sample["query"], parsed.value, checks, safety=safety,
                                  cut_off=ref.completion_tokens >= budget).reason() or "ok"
        row["calls"].append(ref)
        row["steps"]["refinement"] = ref
        row.update(refinement=ref.text, refined=parsed.value, refine_status=status)
        return row

    done = client.run_chains(samples, chain)
    for step in ("critique", "refinement"):
        raise_if_outage([r["steps"][step] for r in done if step in r["steps"]],
                        f"text-feedback shard {shard} {step}")
    critiques = pl.DataFrame([_critique_row(r) for r in done],
                             schema=polars_schema("critiques"))
    pairs = (critiques.filter(pl.col("refine_status") == "ok")
             .select("query_id", "query", "sample_index", chosen="refined", rejected="prompt"))
    name = f"{shard:05d}.parquet"
    return {"critiques": write_table(critiques, out_dir / f"critiques-{name}", "critiques"),
            "text_pairs": write_table(pairs, out_dir / f"text_pairs-{name}", "text_pairs"),
            "stats": stats(critiques, time.perf_counter() - start)}


def _critique_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "query_id": row["query_id"], "query": row["query"],
        "sample_index": row["sample_index"], "prompt": row["prompt"],
        "critique": row.get("critique"), "judgement": row.get("judgement"),
        "critique_status": row.get("critique_status", f"{SKIPPED}:sample-{row['status']}"),
        "refinement": row.get("refinement"), "refined": row.get("refined"),
        "refine_status": row.get("refine_status", SKIPPED),
        "render": row.get("judgement") == "yes",
        "check_findings": row.get("check_findings", []),
        "checks_passed": row.get("checks_passed", False), **row_usage(row["calls"]),
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
            **usage_stats(df), "seconds": round(seconds, 2)}


def merge(shards: list[dict[str, DataRef]], out_dir: Path) -> dict[str, Any]:
    """Concatenate the shards into ``critiques.parquet`` and ``text_pairs.parquet``."""
    out: dict[str, Any] = {}
    for table in ("critiques", "text_pairs"):
        df = concat_tables([s[table] for s in shards], table)
        out[table] = write_table(df, out_dir / f"{table}.parquet", table)
    out["stats"] = stats(read_table(out["critiques"], "critiques"), 0.0)
    return out


def to_render(critiques: DataRef, gate: bool = True) -> list[dict[str, Any]]:
    """The samples to render, {query_id, query, sample_index, prompt}: those judged "Yes",
    or with ``gate`` off every sample that was written whole (an ablation without the
    text check)."""
    df = read_table(critiques, "critiques")
    keep = pl.col("render") if gate else ~pl.col("critique_status").str.starts_with(SKIPPED)
    return df.filter(keep).select("query_id", "query", "sample_index", "prompt").to_dicts()
