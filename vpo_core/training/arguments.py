"""trl's arguments of one training run: the section's ``trl`` fields as they are,
checked against trl's own dataclass (``SFTConfig`` / ``DPOConfig``), plus what the
project's knobs decide. Nothing is re-mapped by hand: a new trl field works by naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from vpo_core.config import TrainConfig
from vpo_core.errors import ConfigError

# trl fields the project sets itself, and the setting that decides each.
PROJECT_OWNED: dict[str, str] = {
    "output_dir": "the step's output folder (the work directory)",
    "gradient_accumulation_steps": "global_batch_size",
    "bf16": "bf16", "fp16": "bf16", "use_cpu": "bf16 (and the device found)",
    "seed": "seed (the pipeline's)", "data_seed": "seed (the pipeline's)",
    "max_length": "policy.max_length",
}


def trl_class(kind: str) -> type:
    """trl's configuration dataclass of a training kind (``sft`` or ``dpo``)."""
    from trl import DPOConfig, SFTConfig

    return SFTConfig if kind == "sft" else DPOConfig


def check_fields(kind: str, cfg: TrainConfig, section: str) -> None:
    """Raise :class:`ConfigError` for a ``trl`` field trl does not know (with the closest
    names) or one a project knob decides (naming both)."""
    cls = trl_class(kind)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for name in sorted(cfg.trl):
        if name in PROJECT_OWNED:
            raise ConfigError(f"{section}.trl.{name} contradicts {section}."
                              f"{PROJECT_OWNED[name]}: the project sets it from that; "
                              f"remove {section}.trl.{name}")
        if name not in names:
            near = difflib.get_close_matches(name, names, n=3)
            raise ConfigError(f"{section}.trl.{name}: not a field of trl's {cls.__name__}"
                              + (f" (did you mean {', '.join(near)}?)" if near else ""))


def arguments(kind: str, cfg: TrainConfig, output_dir: str, seed: int, max_length: int,
              world: int, cuda: bool) -> dict[str, Any]:
    """The keyword arguments of trl's config for one run (checked first)."""
    check_fields(kind, cfg, f"train_{kind}")
    per_device = cfg.trl.get("per_device_train_batch_size", 8)
    # the fused AdamW updates in place (the multi-tensor one makes a model-sized temporary
    # each step); DeepSpeed brings its own optimizer
    optim = "adamw_torch" if cfg.zero_stage else "adamw_torch_fused"
    return {"optim": optim, **cfg.trl, "output_dir": output_dir,
            "gradient_accumulation_steps": max(1, cfg.global_batch_size // (per_device * world)),
            "bf16": cfg.bf16 and cuda, "use_cpu": not cuda, "seed": seed, "data_seed": seed,
            "max_length": max_length}
