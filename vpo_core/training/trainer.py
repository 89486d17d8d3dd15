"""SFT and DPO of the prompt optimizer with trl, in one process or as one rank of
``accelerate launch`` (DeepSpeed ZeRO), from a JSON :class:`TrainSpec`.

Checkpoints go to ``<output>/checkpoints`` every ``save_steps``; a run that finds one
resumes from it at its step. They are deleted once the model is saved unless
``keep_checkpoints`` (weights + optimizer state: ~2 GB for SmolLM2-135M in fp32). The
finished model (LoRA adapters merged) goes to ``<output>/model`` with its tokenizer, a
model card, ``metrics.json`` and the loss curve (``loss.png``). Progress (step, loss) is
appended to ``<output>/progress.jsonl`` as it happens, which is how the launcher reports
it while training runs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.config import TrainDpoConfig, TrainSftConfig
from vpo_core.prompts.templates import optimizer_messages
from vpo_core.tables import file_sha256
from vpo_core.training.report import write_report

PROGRESS = "progress.jsonl"
METRICS = "metrics.json"


@dataclass
class TrainSpec:
    """Everything one training run needs, as JSON for the launcher."""

    kind: str                   # "sft" or "dpo"
    base_model: str             # folder or hub id of the starting weights
    data: str                   # sft_examples or dpo_pairs Parquet
    output_dir: str
    train: dict[str, Any]       # a TrainSftConfig / TrainDpoConfig dump
    max_length: int
    seed: int

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> TrainSpec:
        return cls(**json.loads(Path(path).read_text()))

    def config(self) -> TrainSftConfig | TrainDpoConfig:
        return (TrainSftConfig if self.kind == "sft" else TrainDpoConfig).model_validate(
            self.train)


def sft_rows(path: str) -> list[dict[str, Any]]:
    """Prompt/completion conversations from the usable rows of ``sft_examples``: the loss
    falls on the answer only."""
    df = pl.read_parquet(path).filter(pl.col("final_prompt").is_not_null())
    return [{"prompt": optimizer_messages(q),
             "completion": [{"role": "assistant", "content": p}]}
            for q, p in df.select("query", "final_prompt").iter_rows()]


def dpo_rows(path: str) -> list[dict[str, Any]]:
    """prompt / chosen / rejected conversations from ``dpo_pairs``."""
    return pl.read_parquet(path).select("prompt", "chosen", "rejected").to_dicts()


def _callback(output: Path) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Appends step, total steps and logged metrics to progress.jsonl (main rank), with
        the wall clock and this rank's peak memory: a launched run's step times and memory
        can only be read from here."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
                   **kwargs: Any) -> None:
            if state.is_world_process_zero and logs:
                with open(output / PROGRESS, "a") as fh:
                    fh.write(json.dumps({"step": state.global_step,
                                         "max_steps": state.max_steps, **logs,
                                         "time": time.time(), **_peak_memory()}) + "\n")

    return Progress()


def _peak_memory() -> dict[str, float]:
    """Peak resident memory of this process and, on a GPU, torch's peak allocation (GB)."""
    import resource

    import torch

    peak = {"rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}
    if torch.cuda.is_available():
        peak["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return peak


def _arguments(spec: TrainSpec, cfg: TrainSftConfig | TrainDpoConfig) -> dict[str, Any]:
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(Path(spec.output_dir) / "checkpoints"),
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=max(1, cfg.global_batch_size
                                        // (cfg.per_device_batch_size * world)),
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        lr_scheduler_type=cfg.lr_scheduler_type,
        max_steps=cfg.max_steps or -1, warmup_steps=cfg.warmup_ratio,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2,
        bf16=cfg.bf16 and cuda, use_cpu=not cuda,
        gradient_checkpointing=cfg.gradient_checkpointing,
        # the fused AdamW updates in place: the multi-tensor one makes a model-sized
        # temporary at each step (DeepSpeed brings its own optimizer)
        optim="adamw_torch" if cfg.zero_stage else "adamw_torch_fused",
        logging_steps=1, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=2, report_to="none", disable_tqdm=True,
        seed=spec.seed, data_seed=spec.seed, max_length=spec.max_length,
        dataloader_num_workers=0)


def build_trainer(spec: TrainSpec) -> Any:
    """The trl SFTTrainer or DPOTrainer of a spec (the reference of DPO is the start model:
    a second copy, or the adapter switched off with LoRA)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    cfg = spec.config()
    output = Path(spec.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    rows = sft_rows(spec.data) if spec.kind == "sft" else dpo_rows(spec.data)
    if not rows:
        raise ValueError(f"{spec.data}: no usable training rows")
    peft = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear",
                      task_type="CAUSAL_LM") if cfg.lora else None
    common = dict(model=spec.base_model, train_dataset=Dataset.from_list(rows),
                  processing_class=tokenizer, peft_config=peft, callbacks=[_callback(output)])
    if spec.kind == "sft":
        return SFTTrainer(args=SFTConfig(**_arguments(spec, cfg)), **common)
    args = DPOConfig(**_arguments(spec, cfg), beta=cfg.beta, loss_type=["sigmoid"],
                     precompute_ref_log_probs=cfg.precompute_ref_log_probs)
    return DPOTrainer(ref_model=None, args=args, **common)


def train(spec: TrainSpec) -> dict[str, Any]:
    """Train (resuming from the last checkpoint if there is one), save the final model and
    its report; return the final metrics."""
    from transformers.trainer_utils import get_last_checkpoint

    cfg = spec.config()
    output = Path(spec.output_dir)
    trainer = build_trainer(spec)
    checkpoints = output / "checkpoints"
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    trainer.train(resume_from_checkpoint=resume)
    model_dir = output / "model"
    trainer.model.config.use_cache = True  # trl turns it off to train; generation needs it
    if cfg.lora:
        merged = trainer.model.merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(model_dir)
    else:
        trainer.save_model(str(model_dir))
    if not trainer.is_world_process_zero():
        return {}
    trainer.processing_class.save_pretrained(model_dir)
    (model_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; metrics.json has it
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {"kind": spec.kind, "steps": trainer.state.global_step,
               "resumed_from": resume,  # trl's training_loss is 0 when every step is logged
               "train_loss": sum(h["loss"] for h in history) / max(1, len(history)),
               "final": history[-1] if history else {}, "history": history,
               "rows": len(trainer.train_dataset), "data_sha256": file_sha256(spec.data)}
    (output / METRICS).write_text(json.dumps(metrics, indent=2))
    write_report(spec, cfg, metrics, output)
    if not cfg.keep_checkpoints:  # they only serve a killed run, and weigh ~4x the model
        shutil.rmtree(checkpoints, ignore_errors=True)
    return metrics


def main() -> None:
    """``python -m vpo_core.training --spec spec.json`` (one rank under accelerate)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--spec", required=True, type=Path)
    train(TrainSpec.load(parser.parse_args().spec))
