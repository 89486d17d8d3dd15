"""The end-to-end VPO pipeline: curate → sft-data → train-sft → (sample → text-feedback →
render → score → pairs → train-dpo) × iterations → evaluate. Each stage is a sub-flow
whose tasks are cached on content, so a re-run (or a Retry in the UI) skips every
finished shard and stage."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.curate import curate_flow
from flows.evaluate import evaluate_flow
from flows.pairs import pairs_flow
from flows.render import render_flow
from flows.sample import sample_flow
from flows.score import score_flow
from flows.sft_data import sft_data_flow
from flows.text_feedback import text_feedback_flow
from flows.train import train_dpo_flow, train_sft_flow
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig, Stage


@flow(name="vpo-pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig = DEFAULT_CONFIG, force: list[Stage] | None = None
                  ) -> dict[str, Any]:
    """Run every stage in order; ``force`` lists stages to recompute. ``config.iterations``
    rounds of sampling and DPO each start from the latest model."""
    forced = set(force or [])
    out: dict[str, Any] = {}
    out[Stage.curate] = curate_flow(config, force=Stage.curate in forced)
    queries = out[Stage.curate]["queries"]
    out[Stage.sft_data] = sft_data_flow(config, force=Stage.sft_data in forced,
                                        queries=queries)
    out[Stage.train_sft] = train_sft_flow(config, force=Stage.train_sft in forced,
                                          sft_examples=out[Stage.sft_data]["sft_examples"])
    model = out[Stage.train_sft]["model"]
    models = {"sft": model}
    for it in range(1, config.iterations + 1):
        rnd: dict[str, Any] = {}
        rnd[Stage.sample] = sample_flow(config, force=Stage.sample in forced, queries=queries,
                                        model=model)
        rnd[Stage.text_feedback] = text_feedback_flow(
            config, force=Stage.text_feedback in forced, samples=rnd[Stage.sample]["samples"])
        rnd[Stage.render] = render_flow(config, force=Stage.render in forced,
                                        critiques=rnd[Stage.text_feedback]["critiques"])
        rnd[Stage.score] = score_flow(config, force=Stage.score in forced,
                                      videos=rnd[Stage.render]["videos"])
        rnd[Stage.pairs] = pairs_flow(config, force=Stage.pairs in forced,
                                      text_pairs=rnd[Stage.text_feedback]["text_pairs"],
                                      rewards=rnd[Stage.score]["rewards"])
        rnd[Stage.train_dpo] = train_dpo_flow(config, force=Stage.train_dpo in forced,
                                              dpo_pairs=rnd[Stage.pairs]["dpo_pairs"],
                                              sft_model=model)
        model = rnd[Stage.train_dpo]["model"]
        models["dpo" if it == 1 else f"dpo-iter{it}"] = model
        out.update({f"{k}" if config.iterations == 1 else f"{k}-iter{it}": v
                    for k, v in rnd.items()})
    out[Stage.evaluate] = evaluate_flow(config, force=Stage.evaluate in forced, models=models,
                                        queries=queries)
    return {str(k): v for k, v in out.items()}
