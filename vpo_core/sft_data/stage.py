"""The sft-data stage (paper §3.1): few-shot generation by the teacher, principle
critique by the judge, refinement of the prompts judged "No".

The SFT split is cut into shards of ``shard_size`` queries (in query-id order); each
shard is one call of :func:`run_shard`, which the flow runs as its own cached task, so a
crash loses only the shard in flight. Every query stays in the output with the status of
each step; rows without a usable prompt are kept and the trainer skips them.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.config import LLMConfig, SftDataConfig
from vpo_core.errors import StageFailed
from vpo_core.llm.client import LLMClient, LLMRequest, LLMResult
from vpo_core.prompts.parsing import Parsed, extract_prompt, parse_verdict
from vpo_core.prompts.templates import critique_messages, generation_messages, refine_messages
from vpo_core.shards import split_shards
from vpo_core.tables import DataRef, concat_tables, polars_schema, read_table, write_table

SKIPPED = "skipped"


def shard_queries(queries_ref: DataRef, size: int) -> list[list[dict[str, str]]]:
    """The SFT split as shards of {query_id, query}, in query-id order."""
    return split_shards(queries_ref, "sft", size)


def _status(result: LLMResult, parsed: Parsed) -> str:
    return result.status if not result.ok else parsed.status


def run_shard(rows: list[dict[str, str]], shard: int, judge: LLMConfig, cfg: SftDataConfig,
              out_dir: Path, api_key: str | None = None, model_cache: str | None = None
              ) -> dict[str, Any]:
    """Generate, critique and refine one shard; write its ``sft_examples`` rows.

    Raises StageFailed, writing nothing, when every generation call failed (a wrong key
    or an unreachable server): the message says what the provider answered.
    """
    client = LLMClient(judge, api_key, model_cache)
    lenient = judge.parse_mode == "lenient"
    start = time.perf_counter()
    ids = [r["query_id"] for r in rows]
    by_id = {r["query_id"]: {**r, "calls": []} for r in rows}

    gen = client.run([LLMRequest(i, generation_messages(by_id[i]["query"])) for i in ids])
    if gen and not any(r.ok for r in gen):
        kinds = Counter(r.status for r in gen)
        raise StageFailed(f"sft-data shard {shard}: all {len(gen)} generation calls failed "
                          f"({dict(kinds)}); first error: {gen[0].error}")
    for r in gen:
        row = by_id[r.id]
        parsed = extract_prompt(r.text, lenient)
        row.update(generation=r.text, generated=parsed.value, calls=[r],
                   generation_status=_status(r, parsed), fallback=parsed.fallback)

    judged = [i for i in ids if by_id[i]["generated"]]
    critique_msgs = {i: critique_messages(by_id[i]["query"], by_id[i]["generated"])
                     for i in judged}
    for r in client.run([LLMRequest(i, critique_msgs[i]) for i in judged]):
        row = by_id[r.id]
        parsed = parse_verdict(r.text, "judgement", lenient) if r.ok else Parsed(r.status)
        row["calls"].append(r)
        row.update(critique=r.text, judgement=parsed.value,
                   critique_status=_status(r, parsed),
                   fallback=row["fallback"] or parsed.fallback)

    failing = [i for i in judged if by_id[i].get("judgement") == "no"] if cfg.refine else []
    for r in client.run([LLMRequest(i, refine_messages(critique_msgs[i], by_id[i]["critique"]))
                         for i in failing]):
        row = by_id[r.id]
        parsed = extract_prompt(r.text, lenient)
        row["calls"].append(r)
        row.update(refinement=r.text, refined=parsed.value, refine_status=_status(r, parsed),
                   fallback=row["fallback"] or parsed.fallback)

    table = pl.DataFrame([_row(by_id[i], shard, judge.model) for i in ids],
                         schema=polars_schema("sft_examples"))
    ref = write_table(table, out_dir / f"sft_examples-{shard:05d}.parquet", "sft_examples")
    return {"examples": ref, "stats": shard_stats(table, time.perf_counter() - start)}


def _row(row: dict[str, Any], shard: int, model: str) -> dict[str, Any]:
    calls: list[LLMResult] = row["calls"]
    final = row.get("refined") or row.get("generated")
    status = "ok" if final else row["generation_status"]
    return {
        "query_id": row["query_id"], "query": row["query"], "shard": shard,
        "generation": row.get("generation"), "generated": row.get("generated"),
        "generation_status": row["generation_status"],
        "critique": row.get("critique"), "judgement": row.get("judgement"),
        "critique_status": row.get("critique_status", SKIPPED),
        "refinement": row.get("refinement"), "refined": row.get("refined"),
        "refine_status": row.get("refine_status", SKIPPED),
        "final_prompt": final, "status": status, "fallback_parse": bool(row["fallback"]),
        "model": model,
        "prompt_tokens": sum(c.prompt_tokens for c in calls),
        "completion_tokens": sum(c.completion_tokens for c in calls),
        "cost": sum(c.cost for c in calls), "calls": len(calls),
    }


def shard_stats(df: pl.DataFrame, seconds: float) -> dict[str, Any]:
    """Counts and rates of a shard (or of the merged table)."""
    def counts(col: str) -> dict[str, int]:
        vc = df.get_column(col).value_counts()
        return dict(zip(vc[col], vc["count"], strict=True))

    return {"rows": df.height, "usable": int(df["final_prompt"].is_not_null().sum()),
            "generation": counts("generation_status"), "critique": counts("critique_status"),
            "judgement": {str(k): v for k, v in counts("judgement").items()},
            "refine": counts("refine_status"), "status": counts("status"),
            "fallback_parses": int(df["fallback_parse"].sum()),
            "prompt_tokens": int(df["prompt_tokens"].sum()),
            "completion_tokens": int(df["completion_tokens"].sum()),
            "cost": float(df["cost"].sum()), "calls": int(df["calls"].sum()),
            "seconds": round(seconds, 2)}


def merge(shards: list[DataRef], out_dir: Path) -> dict[str, Any]:
    """Concatenate the shards into ``sft_examples.parquet``."""
    df = concat_tables(shards, "sft_examples")
    ref = write_table(df, out_dir / "sft_examples.parquet", "sft_examples")
    return {"sft_examples": ref, "stats": shard_stats(df, 0.0)}


def _rate(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def summary_markdown(stats: dict[str, Any], seconds: float, ref: DataRef, model: str) -> str:
    """Pass rate of the critique, refinement rate, refusals, parse failures, tokens, cost."""
    n = stats["rows"]
    judged = sum(v for k, v in stats["critique"].items() if k != SKIPPED)
    yes = stats["judgement"].get("yes", 0)
    refined = stats["refine"].get("ok", 0)
    asked_refine = sum(v for k, v in stats["refine"].items() if k != SKIPPED)
    refusals = sum(stats[s].get("refusal", 0) for s in ("generation", "critique", "refine"))
    unparseable = sum(stats[s].get("unparseable", 0) for s in ("generation", "critique",
                                                               "refine"))
    errors = {k: v for s in ("generation", "critique", "refine")
              for k, v in stats[s].items() if k.startswith("error:")}
    lines = [
        "# SFT data", "",
        f"**{stats['usable']:,} of {n:,}** queries have a usable prompt (model `{model}`).",
        "",
        "| measure | value |", "|---|---:|",
        f"| critique pass rate (judged Yes) | {_rate(yes, judged)} ({yes:,}/{judged:,}) |",
        f"| refinement rate (refined / judged No) | {_rate(refined, asked_refine)} "
        f"({refined:,}/{asked_refine:,}) |",
        f"| refusals (all steps) | {refusals:,} |",
        f"| unparseable answers (all steps) | {unparseable:,} |",
        f"| lenient (fallback) parses | {stats['fallback_parses']:,} |",
        f"| errors | {', '.join(f'{k} {v}' for k, v in errors.items()) or 'none'} |",
        f"| LLM calls | {stats['calls']:,} |",
        f"| tokens (prompt + completion) | {stats['prompt_tokens']:,} + "
        f"{stats['completion_tokens']:,} |",
        f"| cost (USD, where litellm knows it) | {stats['cost']:.4f} |",
        f"| time | {seconds:.1f} s |",
        "", "| step | " + " | ".join(["ok", "refusal", "unparseable", "skipped", "errors"])
        + " |", "|---|---:|---:|---:|---:|---:|"]
    for step in ("generation", "critique", "refine"):
        c = stats[step]
        err = sum(v for k, v in c.items() if k.startswith("error:"))
        lines.append(f"| {step} | {c.get('ok', 0)} | {c.get('refusal', 0)} | "
                     f"{c.get('unparseable', 0)} | {c.get(SKIPPED, 0)} | {err} |")
    lines += ["", f"Output: `{ref.path}` ({ref.rows:,} rows)."]
    return "\n".join(lines) + "\n"


def sample_rows(ref: DataRef, n: int = 10) -> list[dict[str, Any]]:
    """Query, prompt, verdict and refinement of a few rows, for the table artifact."""
    return (read_table(ref, "sft_examples").head(n)
            .select("query", "generated", "judgement", "refined", "status").to_dicts())
