"""Prefect tasks of the render stage: one cached task per shard of prompts, and the
merge. A shard runs inline or, with ``placement.render`` set, on that pool's workers
(tasks/runner.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.caching import stage_task
from vpo_core.config import RenderConfig
from vpo_core.render.renderer import render_rows
from vpo_core.tables import DataRef, concat_tables, write_table


@stage_task(name="render-shard")
def shard(rows: list[dict[str, Any]], index: int, cfg: RenderConfig, seed: int,
          out_dir: str) -> dict[str, Any]:
    out = Path(out_dir)
    df = render_rows(rows, cfg, out, seed)
    return {"videos": write_table(df, out / f"videos-{index:05d}.parquet", "videos")}


@stage_task(name="render-merge")
def merge(shards: list[DataRef], out_dir: str) -> dict[str, Any]:
    df = concat_tables(shards, "videos")
    vc = df.get_column("status").value_counts()
    return {"videos": write_table(df, Path(out_dir) / "videos.parquet", "videos"),
            "stats": {"videos": df.height,
                      "status": dict(zip(vc["status"], vc["count"], strict=True)),
                      "render_seconds": round(float(df["seconds"].sum()), 2)}}
