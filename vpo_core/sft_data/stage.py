"""The sft-data stage (paper §3.1): few-shot generation by the teacher, principle
critique by the judge, refinement of the prompts judged "No".

The SFT split is cut into shards of ``shard_size`` queries (in query-id order); each
shard is one call of :func:`run_shard`, which the flow runs as its own cached task, so a
crash loses only the shard in flight (and with the call store, not even its answers).
Inside a shard each query runs its own chain of calls, generate -> critique -> refine,
with no barrier between queries; the shards of a stage share the process's limits.

Every prompt goes through the principle checks (:mod:`vpo_core.checks`): a generation
failing a hard check is a No without a judge call, and goes to refinement with the failed
checks as its critique; a refinement failing one is no target.

A row is an SFT target (``final_prompt``, status ``ok``) only when its generation passed
the checks and was judged Yes, or was judged No (by the judge or the checks) and refined
into a prompt that passes them (paper §3.2). Every other row stays in the table with its
reason in ``status``: the generation's status (``refusal``, ``unparseable``,
``error:<kind>``), ``critique-<status>`` (``critique-error:<kind>``,
``critique-unparseable``, ``critique-refusal``), ``refine-failed:<status>`` (including
``refine-failed:check:<codes>``), or ``judged-no-unrefined`` when refinement is off.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.checks import CheckResult, answer_cut_off, check_prompt
from vpo_core.config import ChecksConfig, LLMConfig, SftDataConfig
from vpo_core.critique import critique, step_status
from vpo_core.llm.client import Ask, LLMClient, LLMRequest, LLMResult, raise_if_outage
from vpo_core.llm.usage import row_usage, usage_markdown, usage_stats
from vpo_core.prompts.parsing import Parsed, extract_prompt
from vpo_core.prompts.templates import critique_messages, generation_messages, refine_messages
from vpo_core.shards import split_shards
from vpo_core.tables import DataRef, concat_tables, polars_schema, read_table, write_table

SKIPPED = "skipped"
OK = "ok"


def shard_queries(queries_ref: DataRef, size: int) -> list[list[dict[str, str]]]:
    """The SFT split as shards of {query_id, query}, in query-id order."""
    return split_shards(queries_ref, "sft", size)


def _target(row: dict[str, Any], refine: bool) -> tuple[str | None, str]:
    """(final prompt, status): only vetted prompts become SFT targets."""
    if not row.get("generated"):
        return None, row["generation_status"]
    critique = row.get("critique_status", SKIPPED)
    if critique != OK and not critique.startswith("check:"):
        return None, f"critique-{critique}"
    if row["judgement"] == "yes":
        return row["generated"], OK
    if not refine:
        return None, "judged-no-unrefined"
    if row.get("refine_status") != OK:
        return None, f"refine-failed:{row.get('refine_status')}"
    return row["refined"], OK


def _checked(query: dict[str, Any], result: LLMResult, parsed: Parsed, checks: ChecksConfig,
             budget: int) -> CheckResult:
    return check_prompt(query["query"], parsed.value, checks, safety=bool(query.get("safety")),
                        cut_off=answer_cut_off(parsed.status, result.completion_tokens, budget))


def run_shard(rows: list[dict[str, str]], shard: int, judge: LLMConfig, cfg: SftDataConfig,
              out_dir: Path, api_key: str | None = None, model_cache: str | None = None,
              work_root: str | Path | None = None, checks: ChecksConfig | None = None
              ) -> dict[str, Any]:
    """Generate, critique and refine one shard; write its ``sft_examples`` rows.

    ``work_root`` holds the call store: answers already made (by any run, shard layout or
    stage) are not asked again. When every call of a step failed, nothing is written:
    a transient outage raises TransientError (Prefect retries the task), a permanent
    error (a wrong key, an unknown model) StageFailed with the provider's message.
    """
    client = LLMClient(judge, api_key, model_cache, work_root)
    lenient = judge.parse_mode == "lenient"
    start = time.perf_counter()

    checks = checks or ChecksConfig()
    budget = judge.prompt_max_tokens or judge.max_tokens

    async def chain(query: dict[str, Any], ask: Ask) -> dict[str, Any]:
        qid, text = query["query_id"], query["query"]
        gen = await ask(LLMRequest(qid, generation_messages(text), max_tokens=budget))
        parsed = extract_prompt(gen.text, lenient)
        row = {**query, "calls": [gen], "steps": {"generation": gen}, "generation": gen.text,
               "generated": parsed.value, "generation_status": step_status(gen, parsed),
               "fallback": parsed.fallback}
        if not row["generated"]:
            return row
        checked = _checked(query, gen, parsed, checks, budget)
        row["generation_checks"] = [f.code for f in checked.findings]
        asked = critique_messages(text, row["generated"])
        crit = await critique(ask, LLMRequest(qid, asked), checked, lenient)
        if crit.call:
            row["calls"].append(crit.call)
            row["steps"]["critique"] = crit.call
        row.update(critique=crit.text, judgement=crit.judgement, critique_status=crit.status,
                   fallback=row["fallback"] or crit.fallback)
        if not cfg.refine or row["judgement"] != "no":
            return row
        ref = await ask(LLMRequest(qid, refine_messages(asked, row["critique"]),
                                   max_tokens=budget))
        refined = extract_prompt(ref.text, lenient)
        status = step_status(ref, refined)
        if status == OK:
            after = _checked(query, ref, refined, checks, budget)
            status = after.reason() or OK
            row["final_checks"] = after.flags
        row["calls"].append(ref)
        row["steps"]["refinement"] = ref
        row.update(refinement=ref.text, refined=refined.value, refine_status=status,
                   fallback=row["fallback"] or refined.fallback)
        return row

    done = client.run_chains(rows, chain)
    for step in ("generation", "critique", "refinement"):
        raise_if_outage([r["steps"][step] for r in done if step in r["steps"]],
                        f"sft-data shard {shard} {step}")
    table = pl.DataFrame([_row(r, shard, judge.model, cfg.refine) for r in done],
                         schema=polars_schema("sft_examples"))
    ref = write_table(table, out_dir / f"sft_examples-{shard:05d}.parquet", "sft_examples")
    return {"examples": ref, "stats": shard_stats(table, time.perf_counter() - start)}


def _row(row: dict[str, Any], shard: int, model: str, refine: bool) -> dict[str, Any]:
    final, status = _target(row, refine)
    return {
        "query_id": row["query_id"], "query": row["query"], "shard": shard,
        "generation": row.get("generation"), "generated": row.get("generated"),
        "generation_status": row["generation_status"],
        "generation_checks": row.get("generation_checks", []),
        "final_checks": (row.get("final_checks", []) if status == OK and
                         row.get("judgement") == "no" else row.get("generation_checks", []))
        if final else [],
        "critique": row.get("critique"), "judgement": row.get("judgement"),
        "critique_status": row.get("critique_status", SKIPPED),
        "refinement": row.get("refinement"), "refined": row.get("refined"),
        "refine_status": row.get("refine_status", SKIPPED),
        "final_prompt": final, "status": status, "fallback_parse": bool(row["fallback"]),
        "model": model, **row_usage(row["calls"]),
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
            **usage_stats(df), "seconds": round(seconds, 2)}


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
        f"**{stats['usable']:,} of {n:,}** queries are SFT targets (model `{model}`): the "
        "generation judged Yes, or judged No and refined.",
        "", "Not targets: " + (", ".join(f"{k} {v:,}" for k, v in sorted(
            stats["status"].items()) if k != OK) or "none") + ".",
        "",
        "| measure | value |", "|---|---:|",
        f"| critique pass rate (judged Yes) | {_rate(yes, judged)} ({yes:,}/{judged:,}) |",
        f"| refinement rate (refined / judged No) | {_rate(refined, asked_refine)} "
        f"({refined:,}/{asked_refine:,}) |",
        f"| refusals (all steps) | {refusals:,} |",
        f"| unparseable answers (all steps) | {unparseable:,} |",
        f"| lenient (fallback) parses | {stats['fallback_parses']:,} |",
        f"| errors | {', '.join(f'{k} {v}' for k, v in errors.items()) or 'none'} |",
        *usage_markdown(stats),
        f"| time | {seconds:.1f} s |",
        "", "| step | " + " | ".join(["ok", "refusal", "unparseable", "skipped", "errors"])
        + " |", "|---|---:|---:|---:|---:|---:|"]
    for step in ("generation", "critique", "refine"):
        c = stats[step]
        err = sum(v for k, v in c.items() if k.startswith("error:"))
        lines.append(f"| {step} | {c.get('ok', 0)} | {c.get('refusal', 0)} | "
                     f"{c.get('unparseable', 0)} | {c.get(SKIPPED, 0)} | {err} |")
    lines += ["", "Calls are counted when the rows were computed; shards found in Prefect's "
              "cache made none.", "", f"Output: `{ref.path}` ({ref.rows:,} rows)."]
    return "\n".join(lines) + "\n"


def sample_rows(ref: DataRef, n: int = 10) -> list[dict[str, Any]]:
    """Query, prompt, verdict and refinement of a few rows, for the table artifact."""
    return (read_table(ref, "sft_examples").head(n)
            .select("query", "generated", "judgement", "refined", "status").to_dicts())
