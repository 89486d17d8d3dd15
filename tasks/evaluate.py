"""Prefect task of the evaluate stage: every method judged (and optionally rendered and
scored) in one cached task, on the configured prompt suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from tasks.caching import stage_task
from tasks.llm import judge_api_key
from vpo_core.config import ChecksConfig, EvaluateConfig, LLMConfig, RenderConfig, ScoreConfig
from vpo_core.evaluate.methods import FewShot, Method, OptimizerMethod, original
from vpo_core.evaluate.stage import evaluate
from vpo_core.evaluate.suites import suite_rows
from vpo_core.evaluate.video import video_scores
from vpo_core.optimizer import Sampling
from vpo_core.tables import DataRef, read_table
from vpo_core.workdir import current

MODULES = ("vpo_core.evaluate", "vpo_core.checks", "vpo_core.llm", "vpo_core.prompts",
           "vpo_core.optimizer", "vpo_core.render", "vpo_core.reward")


@stage_task(name="evaluate-run", modules=MODULES,
            data=("demonstrations.json", "paper_figure7_few_shot_template.txt",
                  "visionreward_video_checklist.json", "VBench_full_info.json"))
def run(queries: DataRef | None, models: dict[str, DataRef | str], judge: LLMConfig,
        cfg: EvaluateConfig,
        max_new_tokens: int, render: RenderConfig, score: ScoreConfig, checks: ChecksConfig,
        seed: int,
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
    groups = {r["query_id"]: r.get("groups") or [] for r in rows}
    video = (lambda df: video_scores(df, render, score, seed, Path(out_dir), judge, key,
                                     cfg.table1_encoding, groups)) if cfg.video else None
    return evaluate(rows, methods, judge, max(1, cfg.reoptimize_rounds), Path(out_dir), key,
                    model_cache, video, checks, work.root, cfg.suite)
