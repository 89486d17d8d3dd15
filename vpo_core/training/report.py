"""What a trained model carries with it: a model card (base model, data and its hash,
hyper-parameters, final metrics) and its loss curve as a PNG."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vpo_core.config import TrainDpoConfig, TrainSftConfig
    from vpo_core.training.trainer import TrainSpec

_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
         "mean_token_accuracy", "learning_rate")


def loss_plot(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss (and DPO reward margin when present) per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, [h["loss"] for h in history], marker="o", label="loss")
    margins = [h.get("rewards/margins") for h in history]
    if any(m is not None for m in margins):
        ax.plot(steps, [m if m is not None else float("nan") for m in margins], marker="s",
                label="reward margin")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(spec: TrainSpec, cfg: TrainSftConfig | TrainDpoConfig,
                 metrics: dict[str, Any], output: Path) -> None:
    """``model/README.md`` (the model card) and ``loss.png``."""
    history = metrics["history"]
    if history:
        loss_plot(history, output / "loss.png", f"VPO {spec.kind.upper()}: {output.name}")
    final = metrics["final"]
    rows = [f"| {k} | {final[k]:.4g} |" for k in _KEYS if isinstance(final.get(k), float)]
    hyper = "\n".join(f"| {k} | {v} |" for k, v in cfg.model_dump().items())
    card = f"""---
base_model: {spec.base_model}
tags: [vpo, prompt-optimization, text-to-video, {spec.kind}]
---

# VPO prompt optimizer ({spec.kind.upper()})

Rewrites short text-to-video queries into detailed, safe prompts that keep the user's
intent (VPO, Cheng et al., ICCV 2025). Trained with trl ({spec.kind.upper()}) on
{dt.date.today().isoformat()}.

- Base model: `{spec.base_model}`
- Data: `{spec.data}` ({metrics['rows']:,} training rows, sha256 `{metrics['data_sha256']}`)
- Steps: {metrics['steps']}{' (resumed from ' + str(metrics['resumed_from']) + ')'
                             if metrics['resumed_from'] else ''}; mean training loss
  {metrics['train_loss']:.4f}; max length {spec.max_length}; seed {spec.seed}

## Final metrics (last logged step)

| metric | value |
|---|---:|
{chr(10).join(rows)}

## Hyper-parameters

| name | value |
|---|---|
{hyper}

## Use

Ask with the optimizer instruction of `vpo_core.prompts.templates.OPTIMIZER_INSTRUCTION`,
or `vpo optimize "a cute dog on the grass" --model <this folder>`.
"""
    (output / "model" / "README.md").write_text(card)


def summary_markdown(stage: str, metrics: dict[str, Any], model: Any, loss_png: str) -> str:
    """The training stage's summary artifact."""
    final = metrics.get("final", {})
    rows = "\n".join(f"| {k} | {final[k]:.4g} |" for k in _KEYS if k in final)
    resumed = metrics.get("resumed_from")
    return (f"# {stage}\n\n{metrics['steps']} optimizer steps on {metrics['rows']:,} rows"
            f"{f' (resumed from {resumed})' if resumed else ''}; mean training loss "
            f"{metrics['train_loss']:.4f}.\n\n| last step | value |\n|---|---:|\n{rows}\n\n"
            f"Model: `{model.path}` (model card in its README.md). Loss curve: "
            f"`{loss_png}`; per-step values in the `{stage}-samples` table.\n")
