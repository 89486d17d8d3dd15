"""Video-level evaluation (the paper's Table 1, and Table 3 over rounds): render every
method's prompt of every round with the configured text-to-video pipeline, score the
videos with the configured reward, and report per method and round the mean score and,
for checklist rewards, Table 1's MonetBench columns on VisionReward's scale (alignment,
stability, preservation, physics, overall: :func:`~vpo_core.reward.checklist.table1_scores`),
overall and per suite group (dimension or category).

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
from vpo_core.reward.checklist import DIMENSIONS, table1_scores
from vpo_core.reward.scoring import score_rows
from vpo_core.tables import DataRef, write_table

VIDEO_COLUMNS = ("score", *DIMENSIONS, "overall")


def video_scores(judgements: pl.DataFrame, render: RenderConfig, score: ScoreConfig,
                 seed: int, out_dir: Path, judge: LLMConfig | None = None,
                 api_key: str | None = None, encoding: str = "signed",
                 groups: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """``eval_rewards`` (one row per method, round and query) and, per method and round,
    the videos scored and the mean of each of :data:`VIDEO_COLUMNS` (None where the
    reward has no checklist answers); with ``groups`` ({query id: suite groups}) the same
    per group."""
    prompted = judgements.filter(pl.col("prompt").is_not_null()).sort("method", "round")
    rows = [{"query_id": f"{r['method']}/{r['query_id']}", "query": r["query"],
             "sample_index": r["round"], "prompt": r["prompt"]} for r in prompted.to_dicts()]
    videos = render_rows(rows, render, out_dir / "videos", seed)
    rewards = score_rows(videos, score, judge, api_key, work_dir=out_dir / "score")
    ref: DataRef = write_table(rewards, out_dir / "eval_rewards.parquet", "rewards")
    by_group = video_means(rewards, groups, encoding) if groups else None
    return {"eval_rewards": ref, "video": video_means(rewards, encoding=encoding),
            "video_by_group": by_group}


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
