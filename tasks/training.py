"""Prefect tasks of the training stages: the starting weights, SFT and DPO runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks.caching import stage_task
from vpo_core.config import TrainDpoConfig, TrainSftConfig
from vpo_core.models.bundled import BUNDLED_PREFIX, resolve_model
from vpo_core.tables import DataRef, ref_for, ref_for_dir
from vpo_core.training.launch import run_training
from vpo_core.training.trainer import TrainSpec
from vpo_core.workdir import current


@task(name="policy-base")
def base_model(model: str) -> DataRef | str:
    """The starting weights: the bundled SmolLM2 (converted once), a local folder (keyed by
    its content), or a hub id (keyed by name)."""
    if model.startswith(BUNDLED_PREFIX):
        return ref_for_dir(resolve_model(model, current().models))
    return ref_for_dir(model) if Path(model).is_dir() else model


def _reporter(stage: str) -> Any:
    """Progress artifact and a log line per logged training step."""
    logger = get_run_logger()
    artifact = create_progress_artifact(0.0, key=f"{stage}-progress",
                                        description=f"{stage}: optimizer steps done")

    def report(line: dict[str, Any]) -> None:
        if "loss" not in line:
            return
        update_progress_artifact(artifact, 100.0 * line["step"] / max(1, line["max_steps"]))
        logger.info("%s: step %d/%d loss %.4f", stage, line["step"], line["max_steps"],
                    line["loss"])

    return report


def _train(kind: str, data: DataRef, base: DataRef | str, train: Any, max_length: int,
           seed: int, out_dir: str) -> dict[str, Any]:
    spec = TrainSpec(kind, base.path if isinstance(base, DataRef) else base, data.path,
                     out_dir, train.model_dump(), max_length, seed)
    metrics = run_training(spec, _reporter(f"train-{kind}"))
    return {"model": ref_for_dir(Path(out_dir) / "model"),
            "metrics": {k: v for k, v in metrics.items() if k != "final"} | {
                "final": {k: v for k, v in metrics["final"].items()
                          if isinstance(v, int | float)}},
            "loss_png": ref_for(Path(out_dir) / "loss.png", "image")}


@stage_task(name="train-sft-run")
def train_sft(data: DataRef, base: DataRef | str, train: TrainSftConfig, max_length: int,
              seed: int, out_dir: str) -> dict[str, Any]:
    return _train("sft", data, base, train, max_length, seed, out_dir)


@stage_task(name="train-dpo-run")
def train_dpo(data: DataRef, base: DataRef, train: TrainDpoConfig, max_length: int,
              seed: int, out_dir: str) -> dict[str, Any]:
    return _train("dpo", data, base, train, max_length, seed, out_dir)
