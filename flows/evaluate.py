"""The evaluate flow: held-out queries -> text-level alignment of every method (paper
Table 2), iterative re-optimisation (Table 3), optional video-level scores."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.chain import run_chain
from tasks import evaluate as steps
from tasks.artifacts import publish_stage
from tasks.runner import Where, run_step
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig, Stage
from vpo_core.evaluate.suites import suite_ref
from vpo_core.tables import DataRef, read_table
from vpo_core.workdir import activate


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                  models: dict[str, DataRef | str] | None = None,
                  queries: DataRef | None = None
                  ) -> dict[str, DataRef]:
    """Judge the original query, the few-shot teacher and each optimizer model (``models``:
    name -> model folder or hub id, e.g. base, sft, dpo) on the eval split."""
    work = activate(config.work_dir)
    suite = suite_ref(config.evaluate.suite)   # None: the held-out split of the chain's queries
    queries = queries or (None if suite else run_chain(config, stop=Stage.sft_data).refs["queries"])
    out = run_step(steps.run, work, force, stage="evaluate",
                   where=Where.of(config.placement, "evaluate"), queries=queries,
                   models=models or {}, judge=config.judge, cfg=config.evaluate,
                   max_new_tokens=config.sample.max_new_tokens, render=config.render,
                   score=config.score, checks=config.checks, seed=config.seed,
                   suite=suite)
    markdown = (out["markdown"] + f"\nChart: `{out['eval_chart'].path}`; every judgement: "
                f"`{out['eval_judgements'].path}`.\n")
    publish_stage("evaluate", markdown, read_table(out["eval_judgements"]).head(20).select(
        "method", "round", "query", "prompt", "label", "status").to_dicts())
    create_markdown_artifact(key="evaluate-report", markdown=markdown,
                             description="evaluate: Table 2 and Table 3 of this run")
    get_run_logger().info("evaluate: report %s, chart %s", out["eval_report"].path,
                          out["eval_chart"].path)
    print(markdown)
    return {k: v for k, v in out.items() if isinstance(v, DataRef)}
