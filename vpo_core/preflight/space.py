"""How much disk a configuration will fill, against the free space where it goes.

The figures are upper bounds from the configuration's sizes, with these rates (measured
on this project's own outputs where it has them; see the README's Preflight section):

- a video: ``num_frames x height x width x preflight.video_bytes_per_pixel`` for the H.264
  MP4 (write_mp4 encodes at CRF 10; the tiny random CogVideoX's noise-like videos measure
  0.55-0.64 bytes a pixel, the default) plus its PNG contact sheet of 4 frames at
  :data:`PNG_BYTES_PER_PIXEL`;
- a trained model: parameters x 4 bytes (2 with bf16), once for SFT and once per DPO
  iteration; during training up to :data:`LIVE_CHECKPOINTS` checkpoints of weights and
  Adam's two moments (:data:`CHECKPOINT_BYTES_PER_PARAM`; ZeRO adds fp32 master weights);
- Parquet: each LLM-written row in its shard and merged files, its texts up to the judge's
  ``max_tokens``; the curated queries at :data:`CURATE_BYTES_PER_INPUT_BYTE` of the input;
- downloads into the Hugging Face cache of hub models not cached yet (online checks).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vpo_core.models.bundled import BUNDLED_NAME
from vpo_core.preflight.findings import Finding
from vpo_core.preflight.plan import Plan

PNG_BYTES_PER_PIXEL = 2.0         # contact sheets of the tiny model: 2.01-2.06 (measured)
CONTACT_SHEET_FRAMES = 4          # vpo_core.render.video.write_contact_sheet's default
CHECKPOINT_BYTES_PER_PARAM = 12   # fp32 weights + Adam's 2 moments (SmolLM2: 12.0 measured)
ZERO_MASTER_BYTES_PER_PARAM = 4   # ZeRO keeps fp32 master weights beside bf16 ones
LIVE_CHECKPOINTS = 3              # save_total_limit=2, plus the one being written
LORA_CHECKPOINT_SHARE = 0.05      # adapters and their optimizer state: a few % of the model
BUNDLED_MODEL_BYTES = 542_000_000  # the bundled SmolLM2 converted to safetensors (measured)
LLM_ROW_BASE_BYTES = 1_000        # ids, statuses, the query
CHARS_PER_TOKEN = 4
TEXTS_PER_LLM_ROW = 3             # e.g. generation, critique, refinement
PARQUET_COPIES = 2                # shard file + merged file
CURATE_BYTES_PER_INPUT_BYTE = 7.0  # bundled sample: 3.6 MB of Parquet from 0.52 MB JSON
WARN_SHARE = 0.8                  # a warning when the estimate passes 80% of the free space


@dataclass(frozen=True)
class Need:
    """Bytes the run will write under ``path``; ``detail`` says how they were counted."""

    label: str
    bytes: float
    path: Path
    detail: str
    field: str = "work_dir"


def size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def video_bytes(plan: Plan) -> float:
    """One rendered video: its MP4 and its contact sheet."""
    r, bpp = plan.cfg.render, plan.cfg.preflight.video_bytes_per_pixel
    return r.height * r.width * (r.num_frames * bpp + CONTACT_SHEET_FRAMES * PNG_BYTES_PER_PIXEL)


def model_needs(plan: Plan, params: int | None, work: Path) -> list[Need]:
    """Trained models kept, and the checkpoints alive at once during one training."""
    if not plan.trainings or params is None:
        return []
    kept, peak = 0.0, 0.0
    for stage, cfg in plan.trainings:
        runs = 1 if stage.name == "train_sft" else plan.cfg.iterations
        ckpt = params * (CHECKPOINT_BYTES_PER_PARAM
                         + (ZERO_MASTER_BYTES_PER_PARAM if cfg.zero_stage and cfg.bf16 else 0))
        ckpt *= LORA_CHECKPOINT_SHARE if cfg.lora else 1
        saves = plan.train_steps(stage, cfg) // cfg.trl.get("save_steps", 500)
        kept += runs * params * (2 if cfg.bf16 else 4)
        kept += runs * min(saves, LIVE_CHECKPOINTS - 1) * ckpt if cfg.keep_checkpoints else 0
        peak = max(peak, min(saves, LIVE_CHECKPOINTS) * ckpt)
    count = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
    return [Need("models", kept, work, f"{1 + plan.cfg.iterations} trained models of "
                 f"{count} parameters"),
            Need("checkpoints", peak, work, "alive at once while training; deleted after "
                 "unless keep_checkpoints")]


def estimate(plan: Plan, work: Path, *, params: int | None, input_bytes: float | None,
             downloads: Sequence[tuple[str, int]]) -> list[Need]:
    """Everything the run will write, by where it goes."""
    cfg = plan.cfg
    needs: list[Need] = []
    if plan.videos:
        r = cfg.render
        needs.append(Need("videos", plan.videos * video_bytes(plan), work,
                          f"{plan.videos:,} videos x {r.num_frames} frames x "
                          f"{r.height}x{r.width} at "
                          f"{cfg.preflight.video_bytes_per_pixel:g} B/px + contact sheets"))
    needs += model_needs(plan, params, work)
    uses_bundled = (cfg.policy.model.endswith(BUNDLED_NAME) or cfg.judge.model.endswith(
        BUNDLED_NAME))
    if uses_bundled and not (work / "models" / BUNDLED_NAME / "config.json").is_file():
        needs.append(Need("bundled model", BUNDLED_MODEL_BYTES, work,
                          "SmolLM2-135M converted once to safetensors"))
    row = LLM_ROW_BASE_BYTES + TEXTS_PER_LLM_ROW * cfg.judge.max_tokens * CHARS_PER_TOKEN
    parquet = PARQUET_COPIES * plan.llm_rows * row
    if input_bytes is not None:
        parquet += CURATE_BYTES_PER_INPUT_BYTE * input_bytes
    needs.append(Need("parquet", parquet, work, f"{plan.llm_rows:,} LLM rows"
                      + (" + curated queries" if input_bytes is not None else "")))
    from vpo_core.preflight.hub import hub_cache

    needs += [Need(f"download {name}", n, hub_cache(), "into the Hugging Face cache",
                   "HF_HOME") for name, n in downloads if n]
    return needs


def existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (what the new files' disk is)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_space(needs: Sequence[Need]) -> list[Finding]:
    """One finding per disk: the estimate (each part shown) against its free space."""
    disks: dict[int, list[Need]] = {}
    for need in needs:
        disks.setdefault(os.stat(existing(need.path)).st_dev, []).append(need)
    findings = []
    for group in disks.values():
        where = existing(group[0].path)
        free = shutil.disk_usage(where).free
        total = sum(n.bytes for n in group)
        parts = "; ".join(f"{n.label} {size(n.bytes)} ({n.detail})" for n in group)
        found = f"needs ~{size(total)} of {size(free)} free at {where}: {parts}"
        name = "work_dir" if any(n.field == "work_dir" for n in group) else group[0].field
        if total > free:
            findings.append(Finding("error", name, found, "free space, point work_dir at a "
                                    "bigger disk, or cut the sizes (curate.split, "
                                    "render.*, sample.k, iterations)"))
        elif total > WARN_SHARE * free:
            findings.append(Finding("warning", name, found + f" (over {WARN_SHARE:.0%})",
                                    "leave room: other runs and caches share the disk"))
        else:
            findings.append(Finding("ok", name, found))
    return findings
