"""The training flows: train-sft (SFT data -> model) and train-dpo (pairs + SFT model ->
model). Each run is one cached task, inline or on the pool ``placement`` names: same
data and settings, no retraining; a killed run resumes from its last checkpoint."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks import training as steps
from tasks.artifacts import publish_stage
from tasks.runner import Where, run_step
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.stage_index import stage_inputs, stage_outputs
from vpo_core.tables import DataRef
from vpo_core.training.report import summary_markdown
from vpo_core.workdir import activate


def _publish(stage: str, out: dict) -> None:
    history = out["metrics"]["history"]
    publish_stage(stage, summary_markdown(stage, out["metrics"], out["model"],
                                         out["loss_png"].path),
                  [{k: h.get(k) for k in ("step", "loss", "learning_rate", "rewards/margins",
                                          "rewards/accuracies") if k in h} for h in history])
    get_run_logger().info(f"{stage}: {out['metrics']['steps']} steps, loss "
                          f"{out['metrics']['train_loss']:.4f} -> {out['model'].path}")


# log_prints off: datasets/dill print bytecode while fingerprinting trl's map functions
@flow(name="train-sft", log_prints=False)
def train_sft_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                   sft_examples: DataRef | None = None) -> dict[str, DataRef | str]:
    """SFT of the policy on the usable rows of ``sft_examples`` (built first if needed);
    returns the model and the weights it started from (``base``)."""
    work = activate(config.work_dir)
    sft_examples = stage_inputs(config, "train-sft",
                                sft_examples=sft_examples)["sft_examples"]
    base = steps.base_model(config.policy.model)
    out = run_step(steps.train_sft, work, force, stage="train-sft",
                   where=Where.of(config.placement, "train-sft"), data=sft_examples,
                   base=base, train=config.train_sft, max_length=config.policy.max_length,
                   seed=config.seed)
    _publish("train-sft", out)
    return stage_outputs(config, "train-sft", {"model": out["model"], "base": base})


@flow(name="train-dpo", log_prints=False)
def train_dpo_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                   dpo_pairs: DataRef | None = None, sft_model: DataRef | None = None
                   ) -> dict[str, DataRef]:
    """DPO from the SFT model (also the reference model) on ``dpo_pairs``."""
    work = activate(config.work_dir)
    given = stage_inputs(config, "train-dpo", dpo_pairs=dpo_pairs, sft_model=sft_model)
    dpo_pairs, sft_model = given["dpo_pairs"], given["sft_model"]
    out = run_step(steps.train_dpo, work, force, stage="train-dpo",
                   where=Where.of(config.placement, "train-dpo"), data=dpo_pairs,
                   base=sft_model, train=config.train_dpo,
                   max_length=config.policy.max_length, seed=config.seed)
    _publish("train-dpo", out)
    return stage_outputs(config, "train-dpo", {"model": out["model"]})
