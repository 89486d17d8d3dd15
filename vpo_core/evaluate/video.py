"""Video-level evaluation (the paper's Table 3 is video-level): render every method's
prompt of every round with the configured text-to-video pipeline, score the videos with
the configured reward, and report per method and round the mean score and, for checklist
rewards, VisionReward's dimensions (alignment, stability, preservation, physics, overall).

In ``eval_rewards`` a video's ``query_id`` is ``<method>/<query id>`` and its
``sample_index`` the round, so the table keeps the ``rewards`` schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.config import LLMConfig, RenderConfig, ScoreConfig
from vpo_core.render.renderer import render_rows
from vpo_core.reward.checklist import DIMENSIONS, dimension_rates
from vpo_core.reward.scoring import score_rows
from vpo_core.tables import DataRef, write_table

VIDEO_COLUMNS = ("score", *DIMENSIONS, "overall")


def video_scores(judgements: pl.DataFrame, render: RenderConfig, score: ScoreConfig,
                 seed: int, out_dir: Path, judge: LLMConfig | None = None,
                 api_key: str | None = None) -> dict[str, Any]:
    """``eval_rewards`` (one row per method, round and query) and, per method and round,
    the videos scored and the mean of each of :data:`VIDEO_COLUMNS` (None where the
    reward has no checklist answers)."""
    prompted = judgements.filter(pl.col("prompt").is_not_null()).sort("method", "round")
    rows = [{"query_id": f"{r['method']}/{r['query_id']}", "query": r["query"],
             "sample_index": r["round"], "prompt": r["prompt"]} for r in prompted.to_dicts()]
    videos = render_rows(rows, render, out_dir / "videos", seed)
    rewards = score_rows(videos, score, judge, api_key, work_dir=out_dir / "score")
    ref: DataRef = write_table(rewards, out_dir / "eval_rewards.parquet", "rewards")
    return {"eval_rewards": ref, "video": video_means(rewards)}


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
