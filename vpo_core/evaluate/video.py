"""Video-level evaluation (the paper's Table 1, and Table 3 over rounds): every method's
prompt of every round goes through the render and score stages' own steps (sharded,
cached, placed on the GPU workers like theirs: flows/evaluate.py), and the report gains,
per method and round, the mean score and, for checklist rewards, Table 1's MonetBench
columns on VisionReward's scale (alignment, stability, preservation, physics, overall:
:func:`~vpo_core.reward.checklist.table1_scores`), overall and per suite group (dimension
or category).

A video's ``query_id`` is ``<method>/<query id>`` and its ``sample_index`` the round, so
the rows keep the ``videos`` and ``rewards`` schemas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.evaluate.report import label_chart, report_markdown
from vpo_core.reward.checklist import DIMENSIONS, table1_scores
from vpo_core.tables import atomic_path, ref_for, write_json

VIDEO_COLUMNS = ("score", *DIMENSIONS, "overall")


def video_rows(judgements: pl.DataFrame) -> list[dict[str, Any]]:
    """The render stage's rows for every prompt of ``eval_judgements``: one video per
    method, round and query."""
    prompted = judgements.filter(pl.col("prompt").is_not_null()).sort(
        "method", "round", "query_id")
    return [{"query_id": f"{r['method']}/{r['query_id']}", "query": r["query"],
             "sample_index": r["round"], "prompt": r["prompt"]} for r in prompted.to_dicts()]


def with_video(summary_file: Path, rewards: pl.DataFrame, out_dir: Path,
               encoding: str = "signed") -> dict[str, Any]:
    """The evaluation's summary, report and chart again, now with the video tables of
    ``rewards`` (the score stage's rows of :func:`video_rows`' videos): per method and
    round, and per suite group where the suite has groups."""
    summary = json.loads(Path(summary_file).read_text(encoding="utf-8"))
    groups = summary.get("query_groups")
    summary["video"] = video_means(rewards, encoding=encoding)
    summary["video_by_group"] = video_means(rewards, groups, encoding) if groups else None
    markdown = report_markdown(summary)
    with atomic_path(out_dir / "eval_report.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    with atomic_path(out_dir / "eval_chart.png") as tmp:
        label_chart(summary["results"], tmp)
    return {"eval_summary": write_json(out_dir / "eval_summary.json", summary),
            "eval_report": ref_for(out_dir / "eval_report.md"),
            "eval_chart": ref_for(out_dir / "eval_chart.png"),
            "summary": summary, "markdown": markdown}


def _video_row(row: dict[str, Any], encoding: str) -> dict[str, Any]:
    answers, ok = row["answers"], row["status"] == "ok"
    dims = table1_scores(answers, encoding) if ok and answers is not None else {}
    method, query_id = row["query_id"].split("/", 1)
    return {"method": method, "query_id": query_id, "round": row["sample_index"],
            "score": row["score"] if ok else None,
            **{d: dims.get(d) for d in (*DIMENSIONS, "overall")}}


def video_means(rewards: pl.DataFrame, groups: dict[str, list[str]] | None = None,
                encoding: str = "signed") -> list[dict[str, Any]]:
    """Per method and round (and, with ``groups`` {query id: its suite groups}, per
    group too: a ``group`` key, a query counting in each of its groups): videos scored
    and the mean of every video column."""
    if rewards.is_empty():
        return []
    per_video = pl.DataFrame([_video_row(r, encoding) for r in rewards.to_dicts()],
                             schema={"method": pl.String, "query_id": pl.String,
                                     "round": pl.Int64,
                                     **{c: pl.Float64 for c in VIDEO_COLUMNS}})
    keys = ["method", "round"]
    if groups is not None:
        pairs = [(q, g) for q, names in groups.items() for g in names]
        if not pairs:
            return []
        per_video = per_video.join(pl.DataFrame(pairs, schema=["query_id", "group"],
                                                orient="row"), on="query_id")
        keys = ["group", *keys]
    means = (per_video.group_by(keys, maintain_order=True)
             .agg(pl.col("score").count().alias("videos"),
                  *[pl.col(c).mean() for c in VIDEO_COLUMNS]).sort(keys))
    return json.loads(means.write_json())
