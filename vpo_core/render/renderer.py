"""Rendering rows of prompts to videos, one row of the ``videos`` table per prompt.

Every video has its own seed, derived from the run's seed, the query and the sample, so a
resumed or re-sharded run renders the same video. A finished MP4 is never rendered again,
and a video that fails (a GPU out of memory, say) is recorded with its reason while the
others go on.
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from vpo_core.config import RenderConfig
from vpo_core.render.pipelines import check_video_size, load_pipeline
from vpo_core.render.video import read_frames, to_uint8, write_contact_sheet, write_mp4
from vpo_core.tables import polars_schema

Progress = Callable[[int, int], None]


def video_seed(seed: int, query_id: str, sample_index: int) -> int:
    """A seed for one video that depends only on its inputs (not on the shard, the order,
    or Python's per-process string hashing)."""
    digest = hashlib.sha256(f"{seed}\0{query_id}\0{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # fits int64 and torch's manual_seed


def render_rows(rows: list[dict[str, Any]], cfg: RenderConfig, out_dir: Path, seed: int,
                pipe: Any = None, on_progress: Progress | None = None) -> pl.DataFrame:
    """Render each row's ``prompt`` to ``<out_dir>/<query_id>-<sample_index>.mp4`` (and a
    ``.png`` contact sheet); return the rows as a ``videos`` table.

    ``pipe`` defaults to :func:`load_pipeline` (cfg), loaded only when a video is missing,
    so resuming a finished shard loads no model. ``seconds`` is the wall time spent on the
    video in this call (checking and reusing a finished one takes milliseconds).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if pipe is not None:
        check_video_size(pipe, cfg)
    if on_progress is not None:
        on_progress(0, len(rows))
    records = []
    for done, row in enumerate(rows, start=1):
        started = time.perf_counter()
        stem = f"{row['query_id']}-{row['sample_index']}"
        mp4, png = out_dir / f"{stem}.mp4", out_dir / f"{stem}.png"
        record = {
            "query_id": row["query_id"], "query": row["query"],
            "sample_index": row["sample_index"], "prompt": row["prompt"],
            "video_path": str(mp4), "contact_sheet": str(png), "status": "ok", "error": None,
            "pipeline": cfg.pipeline,
            "seed": video_seed(seed, row["query_id"], row["sample_index"]),
            "num_frames": cfg.num_frames, "height": cfg.height, "width": cfg.width,
        }
        frames = _finished_frames(mp4, cfg)
        if frames is None and pipe is None:
            pipe = load_pipeline(cfg)  # outside the try: a model that fails to load fails all
        try:
            if frames is None:
                frames = render_one(pipe, row["prompt"], cfg, record["seed"])
                write_contact_sheet(frames, png)  # before the MP4, which marks it finished
                write_mp4(frames, mp4, cfg.fps)
            elif not png.is_file():
                write_contact_sheet(frames, png)
        except Exception as exc:  # one bad video must not lose the others
            record.update(video_path=None, contact_sheet=None, status=_failure_status(exc),
                          error=str(exc) or type(exc).__name__)
        if record["status"] == "error:oom":
            _free_gpu_memory()
        record["seconds"] = time.perf_counter() - started
        records.append(record)
        if on_progress is not None:
            on_progress(done, len(rows))
    return pl.DataFrame(records, schema=polars_schema("videos"))


def render_one(pipe: Any, prompt: str, cfg: RenderConfig, seed: int) -> np.ndarray:
    """One video as (num_frames, height, width, 3) uint8, checked to be exactly the
    configured shape (a pipeline may silently return another frame count)."""
    device = getattr(pipe, "_execution_device", None) or pipe.device
    generator = torch.Generator(device=device).manual_seed(seed)
    output = pipe(prompt=prompt, num_frames=cfg.num_frames, height=cfg.height,
                  width=cfg.width, num_inference_steps=cfg.num_inference_steps,
                  guidance_scale=cfg.guidance_scale, generator=generator, output_type="np")
    frames = to_uint8(output.frames[0])
    expected = (cfg.num_frames, cfg.height, cfg.width, 3)
    if frames.shape != expected:
        raise ValueError(f"pipeline {cfg.pipeline!r} returned frames of shape {frames.shape}, "
                         f"expected {expected}")
    return frames


def _finished_frames(mp4: Path, cfg: RenderConfig) -> np.ndarray | None:
    """The frames of an MP4 a previous run finished, or None when it must be rendered:
    missing, unreadable, or of another shape than the configured one."""
    if not mp4.is_file():
        return None
    try:
        frames = read_frames(mp4)
    except (OSError, ValueError, RuntimeError):
        return None
    return frames if frames.shape == (cfg.num_frames, cfg.height, cfg.width, 3) else None


def _failure_status(exc: Exception) -> str:
    """``error:oom`` for out-of-memory on any device, else ``error:<ExceptionClass>``."""
    if isinstance(exc, torch.OutOfMemoryError) or (
            isinstance(exc, RuntimeError) and "out of memory" in str(exc)):
        return "error:oom"
    return f"error:{type(exc).__name__}"


def _free_gpu_memory() -> None:
    """Give back what the failed video held, so the next one starts from a clean cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
