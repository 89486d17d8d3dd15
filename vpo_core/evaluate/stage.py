"""The evaluate stage (paper Tables 1, 2 and 3): every method writes a prompt for each
query of the suite (:mod:`.suites`; optimizers once per round), the judge labels each
prompt, and the stage writes the judgements, their rates (overall and per suite dimension
or category), a markdown report and a chart.

Every (query, method, round) stays in ``eval_judgements`` with its status: rows the judge
could not label are counted, not dropped (see :mod:`.report` for how rates count them).
The stage fails only when every judge call failed (a wrong key, an unreachable server),
writing nothing. Every prompt also goes through the principle checks
(:mod:`vpo_core.checks`), reported beside the judge's labels. With ``evaluate.video`` the
prompts are rendered and scored by the render and score stages' steps afterwards, and
:func:`vpo_core.evaluate.video.with_video` adds their table to the report.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.checks import CUT_OFF, check_prompt
from vpo_core.config import ChecksConfig, LLMConfig
from vpo_core.errors import InputError, StageFailed
from vpo_core.evaluate.alignment import LOCAL, Judgement, label_prompts
from vpo_core.evaluate.methods import Method, as_generated
from vpo_core.evaluate.report import group_results, label_chart, report_markdown, results
from vpo_core.tables import (
    atomic_path,
    polars_schema,
    ref_for,
    write_json,
    write_table,
)


def _check(queries: Sequence[Mapping[str, Any]], methods: Mapping[str, Method],
           rounds: int) -> None:
    if rounds < 1:
        raise ValueError(f"evaluate: rounds must be at least 1, got {rounds}")
    if not methods:
        raise ValueError("evaluate: no methods to compare")
    seen: set[str] = set()
    for i, q in enumerate(queries):
        for name in ("query_id", "query"):
            if not isinstance(q.get(name), str) or not q[name].strip():
                raise InputError("missing or empty", row=i, field=name)
        if q["query_id"] in seen:
            raise InputError(f"duplicate query_id {q['query_id']!r}", row=i, field="query_id")
        seen.add(q["query_id"])


def _prompts(queries: Sequence[Mapping[str, Any]], name: str, method: Method,
             rounds: int) -> list[dict[str, Any]]:
    """One row per query and round the method produced."""
    produced = method([q["query"] for q in queries], rounds)
    rows = []
    for round_ in sorted(produced):
        prompts = produced[round_]
        if len(prompts) != len(queries):
            raise ValueError(f"evaluate: method {name!r} gave {len(prompts)} prompts in "
                             f"round {round_} for {len(queries)} queries")
        for q, p in zip(queries, prompts, strict=True):
            g = as_generated(p)
            rows.append({"query_id": q["query_id"], "query": q["query"], "method": name,
                         "round": round_, "prompt": g.prompt, "generation_status": g.status,
                         "safety": bool(q.get("safety", False))})
    return rows


def _judged(row: dict[str, Any], j: Judgement, checks: ChecksConfig) -> dict[str, Any]:
    c = check_prompt(row["query"], row["prompt"], checks, safety=row.pop("safety"),
                     cut_off=row["generation_status"] == CUT_OFF)
    return {**row, "label": j.label, "status": j.status, "judged_by": j.judged_by,
            "judge_answer": j.answer, "fallback": j.fallback, "error": j.error,
            "prompt_tokens": j.prompt_tokens, "completion_tokens": j.completion_tokens,
            "cost": j.cost, "checks_passed": c.passed,
            "check_findings": [f.code for f in c.findings], "words": c.words,
            "coverage": c.coverage, "distinct_2": c.measures.get("distinct_2")}


def _fail_if_judge_down(judgements: list[Judgement]) -> None:
    called = [j for j in judgements if j.called]
    if called and all(j.status.startswith("error:") for j in called):
        kinds = Counter(j.status for j in called)
        raise StageFailed(f"evaluate: all {len(called)} judge calls failed ({dict(kinds)}); "
                          f"first error: {called[0].error}")


def evaluate(queries: Sequence[Mapping[str, Any]], methods: Mapping[str, Method],
             judge: LLMConfig, rounds: int, out_dir: Path, api_key: str | None = None,
             model_cache: str | None = None, checks: ChecksConfig | None = None,
             work_root: str | Path | None = None, suite: str = "heldout") -> dict[str, Any]:
    """Judge every method's prompts for ``queries`` ({query_id, query, optional groups:
    the suite's dimensions or categories}); optimizer methods run ``rounds`` rounds.
    Writes ``eval_judgements.parquet``, ``eval_summary.json``,
    ``eval_report.md`` and ``eval_chart.png`` into ``out_dir`` and returns their refs, the
    summary and the report's markdown."""
    start = time.perf_counter()
    _check(queries, methods, rounds)
    rows = [row for name, method in methods.items()
            for row in _prompts(queries, name, method, rounds)]
    judgements = label_prompts([(r["query"], r["prompt"]) for r in rows], judge, api_key,
                               model_cache, work_root)
    _fail_if_judge_down(judgements)
    table = [_judged(r, j, checks or ChecksConfig())
             for r, j in zip(rows, judgements, strict=True)]
    out_dir = Path(out_dir)
    ref = write_table(pl.DataFrame(table, schema=polars_schema("eval_judgements")),
                      out_dir / "eval_judgements.parquet", "eval_judgements")
    df = pl.read_parquet(ref.path)
    groups = {q["query_id"]: list(q.get("groups") or []) for q in queries}
    summary = {
        "judge": judge.model, "queries": len(queries), "rounds": rounds, "rows": df.height,
        "calls": sum(j.called for j in judgements),
        "local_refusals": sum(j.judged_by == LOCAL for j in judgements),
        "errors": int(df["status"].str.starts_with("error:").sum()),
        "fallback": int(df["fallback"].sum()),
        "prompt_tokens": int(df["prompt_tokens"].sum()),
        "completion_tokens": int(df["completion_tokens"].sum()),
        "cost": float(df["cost"].sum()), "seconds": round(time.perf_counter() - start, 2),
        "results": results(df), "suite": suite,
        "by_group": group_results(df, groups),
        "query_groups": groups if any(groups.values()) else None,   # for the video tables
    }
    summary["video"] = summary["video_by_group"] = None   # with_video adds them
    markdown = report_markdown(summary)
    with atomic_path(out_dir / "eval_report.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    with atomic_path(out_dir / "eval_chart.png") as tmp:
        label_chart(summary["results"], tmp)
    return {"eval_judgements": ref,
            "eval_summary": write_json(out_dir / "eval_summary.json", summary),
            "eval_report": ref_for(out_dir / "eval_report.md"),
            "eval_chart": ref_for(out_dir / "eval_chart.png"),
            "summary": summary, "markdown": markdown}
