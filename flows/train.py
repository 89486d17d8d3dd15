"""The training flows: train-sft (SFT data -> model) and train-dpo (pairs + SFT model ->
model). Each run is one cached task: same data and settings, no retraining; a killed run
resumes from its last checkpoint."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.sft_data import sft_data_flow
from tasks import training as steps
from tasks.artifacts import publish_stage
from tasks.caching import run_cached
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.tables import DataRef
from vpo_core.training.report import summary_markdown
from vpo_core.workdir import WorkDir


def _publish(stage: str, out: dict) -> None:
    history = out["metrics"]["history"]
    publish_stage(stage, summary_markdown(stage, out["metrics"], out["model"], out["loss_png"]),
                  [{k: h.get(k) for k in ("step", "loss", "learning_rate", "rewards/margins",
                                          "rewards/accuracies") if k in h} for h in history])


# log_prints off: datasets/dill print bytecode while fingerprinting trl's map functions
@flow(name="train-sft", log_prints=False)
def train_sft_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                   sft_examples: DataRef | None = None) -> dict[str, DataRef]:
    """SFT of the policy on the usable rows of ``sft_examples`` (built first if needed)."""
    work = WorkDir.at(config.work_dir)
    if sft_examples is None:
        sft_examples = sft_data_flow(config)["sft_examples"]
    base = steps.base_model(config.policy.model, str(work.models))
    out = run_cached(steps.train_sft, work, force, stage="train-sft", data=sft_examples,
                     base=base, train=config.train_sft, max_length=config.policy.max_length,
                     seed=config.seed)
    _publish("train-sft", out)
    get_run_logger().info(f"train-sft: {out['metrics']['steps']} steps, loss "
          f"{out['metrics']['train_loss']:.4f} -> {out['model'].path}")
    return {"model": out["model"]}


@flow(name="train-dpo", log_prints=False)
def train_dpo_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                   dpo_pairs: DataRef | None = None, sft_model: DataRef | None = None
                   ) -> dict[str, DataRef]:
    """DPO from the SFT model (also the reference model) on ``dpo_pairs``."""
    from flows.pairs import pairs_flow

    work = WorkDir.at(config.work_dir)
    if sft_model is None:
        sft_model = train_sft_flow(config)["model"]
    if dpo_pairs is None:
        dpo_pairs = pairs_flow(config)["dpo_pairs"]
    out = run_cached(steps.train_dpo, work, force, stage="train-dpo", data=dpo_pairs,
                     base=sft_model, train=config.train_dpo,
                     max_length=config.policy.max_length, seed=config.seed)
    _publish("train-dpo", out)
    get_run_logger().info(f"train-dpo: {out['metrics']['steps']} steps, loss "
          f"{out['metrics']['train_loss']:.4f} -> {out['model'].path}")
    return {"model": out["model"]}
