"""Video-level evaluation (the paper's Table 3 is video-level): every method's prompt of
every round goes through the render and score stages' own steps (sharded, cached, placed
on the GPU workers like theirs: flows/evaluate.py), and the report gains, per method and
round, the mean score and, for checklist rewards, VisionReward's dimensions (alignment,
stability, preservation, physics, overall).

A video's ``query_id`` is ``<method>/<query id>`` and its ``sample_index`` the round, so
the rows keep the ``videos`` and ``rewards`` schemas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.evaluate.report import label_chart, report_markdown
from vpo_core.reward.checklist import DIMENSIONS, dimension_rates
from vpo_core.tables import atomic_path, ref_for, write_json

VIDEO_COLUMNS = ("score", *DIMENSIONS, "overall")


def video_rows(judgements: pl.DataFrame) -> list[dict[str, Any]]:
    """The render stage's rows for every prompt of ``eval_judgements``: one video per
    method, round and query."""
    prompted = judgements.filter(pl.col("prompt").is_not_null()).sort(
        "method", "round", "query_id")
    return [{"query_id": f"{r['method']}/{r['query_id']}", "query": r["query"],
             "sample_index": r["round"], "prompt": r["prompt"]} for r in prompted.to_dicts()]


def with_video(summary_file: Path, rewards: pl.DataFrame, out_dir: Path) -> dict[str, Any]:
    """The evaluation's summary, report and chart again, now with the video table of
    ``rewards`` (the score stage's rows of :func:`video_rows`' videos)."""
    summary = json.loads(Path(summary_file).read_text(encoding="utf-8"))
    summary["video"] = video_means(rewards)
    markdown = report_markdown(summary)
    with atomic_path(out_dir / "eval_report.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    with atomic_path(out_dir / "eval_chart.png") as tmp:
        label_chart(summary["results"], tmp)
    return {"eval_summary": write_json(out_dir / "eval_summary.json", summary),
            "eval_report": ref_for(out_dir / "eval_report.md"),
            "eval_chart": ref_for(out_dir / "eval_chart.png"),
            "summary": summary, "markdown": markdown}


def _video_row(row: dict[str, Any]) -> dict[str, Any]:
    answers = row["answers"]
    dims = dimension_rates(answers) if row["status"] == "ok" and answers is not None else {}
    return {"method": row["query_id"].split("/", 1)[0], "round": row["sample_index"],
            "score": row["score"] if row["status"] == "ok" else None,
            "overall": row["visionreward_score"] if row["status"] == "ok" else None,
            **{d: dims.get(d) for d in DIMENSIONS}}


def video_means(rewards: pl.DataFrame) -> list[dict[str, Any]]:
    """Per method and round: videos scored and the mean of every video column."""
    if rewards.is_empty():
        return []
    per_video = pl.DataFrame([_video_row(r) for r in rewards.to_dicts()],
                             schema={"method": pl.String, "round": pl.Int64,
                                     **{c: pl.Float64 for c in VIDEO_COLUMNS}})
    means = (per_video.group_by("method", "round", maintain_order=True)
             .agg(pl.col("score").count().alias("videos"),
                  *[pl.col(c).mean() for c in VIDEO_COLUMNS]).sort("method", "round"))
    return json.loads(means.write_json())
