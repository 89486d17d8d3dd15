"""The evaluate flow: held-out queries -> text-level alignment of every method (paper
Table 2), iterative re-optimisation (Table 3), optional video-level scores."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.render import render_prompts
from flows.score import score_videos
from tasks import evaluate as steps
from tasks.artifacts import publish_stage
from tasks.caching import run_cached
from tasks.runner import Where, run_step
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.evaluate.suites import suite_ref
from vpo_core.evaluate.video import video_rows
from vpo_core.stage_index import stage_inputs, stage_outputs, trained_models
from vpo_core.stages import spec
from vpo_core.tables import DataRef, read_table
from vpo_core.workdir import WorkDir, activate


def _videos(config: PipelineConfig, work: WorkDir, force: bool, out: dict[str, Any]
            ) -> dict[str, Any]:
    """Every method's prompts rendered and scored by the render and score stages' own steps
    (cached per shard, placed like theirs), then the report with the video table."""
    rows = video_rows(read_table(out["eval_judgements"], "eval_judgements"))
    videos = render_prompts(config, work, force, rows)["videos"]
    rewards = score_videos(config, work, force, videos)["rewards"]
    report = run_cached(steps.video_report, work, force, stage="evaluate",
                        summary=out["eval_summary"], rewards=rewards,
                        encoding=config.evaluate.table1_encoding)
    return {**report, "eval_videos": videos, "eval_rewards": rewards}


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                  models: dict[str, DataRef | str] | None = None,
                  queries: DataRef | None = None
                  ) -> dict[str, DataRef]:
    """Judge the original query, the few-shot teacher and each optimizer model (``models``:
    name -> model folder or hub id, e.g. base, sft, dpo; by default the models trained
    under this configuration) on the eval split."""
    work = activate(config.work_dir)
    suite = suite_ref(config.evaluate.suite)   # None: the held-out split of curate's queries
    queries = stage_inputs(config, "evaluate", queries=queries)["queries"]
    models = trained_models(config) if models is None else models
    out = run_step(steps.run, work, force, stage="evaluate",
                   where=Where.of(config.placement, "evaluate"), queries=queries,
                   models=models, judge=config.judge, cfg=config.evaluate,
                   max_new_tokens=config.sample.max_new_tokens, checks=config.checks,
                   seed=config.seed, suite=suite)
    if config.evaluate.video:
        out |= _videos(config, work, force, out)
    markdown = (out["markdown"] + f"\nChart: `{out['eval_chart'].path}`; every judgement: "
                f"`{out['eval_judgements'].path}`.\n")
    publish_stage("evaluate", markdown, read_table(out["eval_judgements"]).head(20).select(
        spec("evaluate").summary).to_dicts())
    create_markdown_artifact(key="evaluate-report", markdown=markdown,
                             description="evaluate: Table 2 and Table 3 of this run")
    get_run_logger().info("evaluate: report %s, chart %s", out["eval_report"].path,
                          out["eval_chart"].path)
    print(markdown)
    return stage_outputs(config, "evaluate",
                         {k: v for k, v in out.items() if isinstance(v, DataRef)})
