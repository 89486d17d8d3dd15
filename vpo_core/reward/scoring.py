"""The score stage's library: one ``rewards`` row per ``videos`` row, whatever the backend.

Backends (``score.backend``):

- ``frame-metrics``: the embedded, weight-free default (:mod:`.frame_metrics`).
- ``checklist``: answers to the 64 questions computed elsewhere (e.g. VisionReward run on
  another cluster), given by video path (:func:`.checklist.read_answers_file`).
- ``vlm-checklist``: a vision LLM answers the questions (:mod:`.vlm`).
- ``visionreward``: VisionReward-Video in its own environment (:mod:`.visionreward`).

Checklist backends ask about each video's query (the same questions for every video of a
query) and keep the 64 answers, VPO's score and VisionReward's own. No row is
dropped: a video that was not rendered is ``skipped:render-failed``; a video that could not
be scored is ``error:<kind>`` (unreadable, metrics, unparseable, invalid-answers,
no-answers, visionreward, or the LLM client's kinds) with the reason in ``error``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import polars as pl

from vpo_core.config import LLMConfig, ScoreConfig
from vpo_core.errors import ConfigError, InputError
from vpo_core.reward import visionreward, vlm
from vpo_core.reward.checklist import (
    N_QUESTIONS,
    Answers,
    VideoToScore,
    validate_answers,
    visionreward_score,
    vpo_score,
)
from vpo_core.reward.frame_metrics import score_video
from vpo_core.tables import polars_schema

RENDER_FAILED = "skipped:render-failed"


def video_id(query_id: str, sample_index: int) -> str:
    """The id a video goes by in backend requests and manifests."""
    return f"{query_id}/{sample_index}"


def _metrics(values: Mapping[str, Any]) -> str:
    return json.dumps(dict(values), sort_keys=True, default=str)


def _frame_metrics_row(path: str) -> dict[str, Any]:
    try:
        result = score_video(path)
    except InputError as exc:
        return {"status": "error:unreadable", "error": str(exc)}
    except (cv2.error, ValueError) as exc:
        return {"status": "error:metrics", "error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"status": "ok", "score": result.score, "metrics": _metrics(result.metrics)}


def _storable(values: Sequence[Any] | None) -> list[bool | None] | None:
    """The answers as the table can hold them (64 booleans or nulls), else nothing."""
    if values is None or len(values) != N_QUESTIONS:
        return None
    if not all(v is None or isinstance(v, bool) for v in values):
        return None
    return list(values)


def _checklist_row(answers: Answers) -> dict[str, Any]:
    detail = dict(answers.detail)
    row: dict[str, Any] = {"answers": _storable(answers.values)}
    if answers.status != "ok":
        return {**row, "status": answers.status, "error": answers.error,
                "metrics": _metrics(detail) if detail else None}
    values = list(answers.values or [])
    holes = len(values) == N_QUESTIONS and any(v is None for v in values)
    try:
        valid = validate_answers(values)
    except InputError as exc:
        kind = "error:unparseable" if holes else "error:invalid-answers"
        return {**row, "status": kind, "error": str(exc),
                "metrics": _metrics(detail) if detail else None}
    detail["yes"] = sum(valid)
    return {"answers": valid, "status": "ok", "score": vpo_score(valid),
            "visionreward_score": visionreward_score(valid), "metrics": _metrics(detail)}


def _given_answers(videos: Sequence[VideoToScore],
                   answers: Mapping[str, Sequence[bool | None]] | None) -> dict[str, Answers]:
    if answers is None:
        raise ConfigError("the checklist backend needs the answers, by video path (see "
                          "vpo_core.reward.checklist.read_answers_file)")
    return {v.id: Answers(list(answers[v.video_path])) if v.video_path in answers
            else Answers(None, "error:no-answers", f"no answers for {v.video_path}")
            for v in videos}


def score_rows(videos: pl.DataFrame, cfg: ScoreConfig, judge: LLMConfig | None = None,
               api_key: str | None = None, *,
               answers: Mapping[str, Sequence[bool | None]] | None = None,
               work_dir: str | Path | None = None) -> pl.DataFrame:
    """Score every row of a ``videos`` table; the result conforms to ``rewards``.

    ``judge`` gives the vlm-checklist backend its endpoint, timeouts and retries (its model
    is replaced by ``cfg.vlm_model``); ``answers`` (video path → 64 answers) feeds the
    checklist backend; ``work_dir`` keeps the visionreward backend's manifest, answers
    and log, so that a rerun resumes.
    """
    rows: list[dict[str, Any]] = []
    todo: list[tuple[dict[str, Any], VideoToScore]] = []
    for v in videos.iter_rows(named=True):
        row = {"query_id": v["query_id"], "query": v["query"],
               "sample_index": v["sample_index"], "prompt": v["prompt"],
               "video_path": v["video_path"], "backend": cfg.backend, "score": None,
               "visionreward_score": None, "answers": None, "metrics": None,
               "status": "ok", "error": None}
        rows.append(row)
        if v["status"] != "ok":
            row.update(status=RENDER_FAILED, error=v.get("error") or v["status"])
        elif not v["video_path"]:
            row.update(status="error:unreadable", error="rendered, but no video_path")
        else:
            todo.append((row, VideoToScore(video_id(v["query_id"], v["sample_index"]),
                                           v["video_path"], v["prompt"], v["query"])))

    if cfg.backend == "frame-metrics":
        for row, video in todo:
            row.update(_frame_metrics_row(video.video_path))
    elif todo:
        found = _checklist_answers([video for _, video in todo], cfg, judge, api_key, answers,
                                   work_dir)
        for row, video in todo:
            row.update(_checklist_row(found[video.id]))
    return pl.DataFrame(rows, schema=polars_schema("rewards"))


def _checklist_answers(videos: list[VideoToScore], cfg: ScoreConfig,
                       judge: LLMConfig | None, api_key: str | None,
                       answers: Mapping[str, Sequence[bool | None]] | None,
                       work_dir: str | Path | None) -> dict[str, Answers]:
    if cfg.backend == "checklist":
        return _given_answers(videos, answers)
    if cfg.backend == "vlm-checklist":
        if not cfg.vlm_model:
            raise ConfigError("score.vlm_model is not set: name a vision-capable litellm "
                              "model (gpt-4o, openai/<name> with judge.api_base, ...)")
        llm = (judge or LLMConfig()).model_copy(update={"model": cfg.vlm_model})
        return vlm.ask_checklist(videos, llm, api_key, n_frames=cfg.vlm_frames)
    return visionreward.ask_checklist(videos, cfg.visionreward_python, work_dir,
                                      model=cfg.visionreward_model,
                                      revision=cfg.visionreward_revision)
