"""Prefect tasks of the evaluate stage: every method judged on the configured prompt
suite in one cached task; with ``evaluate.video`` the report again with the video tables,
once the render and score stages' steps have made and scored the videos
(flows/evaluate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from tasks.caching import stage_task
from tasks.llm import judge_api_key
from vpo_core.config import ChecksConfig, EvaluateConfig, LLMConfig
from vpo_core.evaluate.methods import FewShot, Method, OptimizerMethod, original
from vpo_core.evaluate.stage import evaluate
from vpo_core.evaluate.suites import suite_rows
from vpo_core.evaluate.video import with_video
from vpo_core.optimizer import Sampling
from vpo_core.tables import DataRef, read_table
from vpo_core.workdir import current


@stage_task(name="evaluate-run")
def run(queries: DataRef | None, models: dict[str, DataRef | str], judge: LLMConfig,
        cfg: EvaluateConfig, max_new_tokens: int, checks: ChecksConfig, seed: int,
        out_dir: str, suite: DataRef | None = None) -> dict[str, Any]:
    key, work = judge_api_key(judge), current()
    model_cache = str(work.models)
    rows = suite_rows(cfg.suite, suite) if suite else \
        (read_table(queries, "queries").filter(pl.col("split") == "eval")
         .sort("query_id").select("query_id", "query", "safety").to_dicts())
    sampling = Sampling(cfg.temperature, cfg.top_p, max_new_tokens, seed,
                        cfg.repetition_penalty, cfg.no_repeat_ngram_size)
    methods: dict[str, Method] = {"original": original,
                                  "few-shot": FewShot(judge, key, model_cache, work.root)}
    methods |= {name: OptimizerMethod(ref.path if isinstance(ref, DataRef) else ref, sampling)
                for name, ref in models.items()}
    return evaluate(rows, methods, judge, max(1, cfg.reoptimize_rounds), Path(out_dir), key,
                    model_cache, checks, work.root, cfg.suite)


@stage_task(name="evaluate-video-report")
def video_report(summary: DataRef, rewards: DataRef, encoding: str, out_dir: str
                 ) -> dict[str, Any]:
    """The report with the video tables of the evaluation's scored videos."""
    return with_video(Path(summary.path), read_table(rewards, "rewards"), Path(out_dir),
                      encoding)
