"""The render flow: prompts that passed the text check -> ``videos`` (MP4 + contact sheet
per prompt), one cached task per shard.

With ``render.work_pool`` empty, shards render inline. With ``render.work_pool: gpu`` each
shard is a run of the ``render-shard/gpu`` deployment on that pool (``run_deployment``,
all shards submitted at once; the deployment's concurrency limit keeps one model per
GPU), and this flow waits for them. The work directory must then be on storage the GPU
workers share, since the shards write their videos there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from flows.text_feedback import text_feedback_flow
from tasks import render as steps
from tasks.artifacts import publish_stage, stats_markdown
from tasks.caching import run_cached, run_shards, stage_out_dir
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig, RenderConfig
from vpo_core.errors import StageFailed
from vpo_core.shards import chunks
from vpo_core.tables import DataRef, read_table, ref_for
from vpo_core.text_feedback.stage import to_render
from vpo_core.workdir import WorkDir

SHARD_DEPLOYMENT = "render-shard/{pool}"


@flow(name="render-shard", log_prints=True)
def render_shard_flow(rows: list[dict[str, Any]], index: int, render: RenderConfig,
                      seed: int, work_dir: str, force: bool = False) -> dict[str, DataRef]:
    """Render one shard (the unit a GPU worker runs); cached like the inline path."""
    return run_cached(steps.shard, WorkDir.at(work_dir), force, stage="render", rows=rows,
                      index=index, cfg=render, seed=seed)


def _wait(flow_run_id: Any, poll_s: float = 2.0) -> FlowRun:
    """Block until a flow run reaches a final state."""
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(poll_s)


def _remote(shards: list[dict[str, Any]], pool: str, work: WorkDir, force: bool
            ) -> list[dict[str, DataRef]]:
    """Run every shard as a deployment run on ``pool`` and collect their videos tables."""
    logger = get_run_logger()
    name = SHARD_DEPLOYMENT.format(pool=pool)
    runs = [run_deployment(name, parameters={**{k: v for k, v in s.items() if k != "cfg"},
                                             "render": s["cfg"].model_dump(mode="json"),
                                             "work_dir": str(work.root), "force": force},
                           timeout=0, as_subflow=True) for s in shards]
    logger.info("render: %d shards submitted to %s on pool %r", len(runs), name, pool)
    outs = []
    for shard, submitted in zip(shards, runs, strict=True):
        run = _wait(submitted.id)
        if not run.state.is_completed():
            raise StageFailed(f"render shard {shard['index']} ({run.name} on pool {pool!r}) "
                              f"ended {run.state.name}: {run.state.message}")
        out = stage_out_dir(steps.shard, work, "render", shard)
        outs.append({"videos": ref_for(Path(out) / f"videos-{shard['index']:05d}.parquet",
                                       "videos")})
    return outs


@flow(name="render", log_prints=True)
def render_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                critiques: DataRef | None = None) -> dict[str, DataRef]:
    """Render every sample judged "Yes" with the configured text-to-video pipeline."""
    start, work = time.perf_counter(), WorkDir.at(config.work_dir)
    critiques = critiques or text_feedback_flow(config)["critiques"]
    cfg = config.render.model_copy(update={"work_pool": None})  # where is not what
    shards = [{"rows": part, "index": i, "cfg": cfg, "seed": config.seed}
              for i, part in enumerate(chunks(to_render(critiques), cfg.shard_size))]
    if config.render.work_pool:
        outs = _remote(shards, config.render.work_pool, work, force)
    else:
        outs = run_shards(steps.shard, work, force, stage="render", shards=shards,
                          describe=lambda o: f"{o['videos'].rows} videos")
    merged = run_cached(steps.merge, work, force, stage="render",
                        shards=[o["videos"] for o in outs])
    ref = merged["videos"]
    publish_stage("render", stats_markdown("render", merged["stats"], {"videos": ref},
                                           time.perf_counter() - start),
                  read_table(ref).head(12).select("prompt", "video_path", "contact_sheet",
                                                   "status", "seconds").to_dicts())
    print(f"render: {ref.rows:,} videos ({merged['stats']['status']}) -> {ref.path}")
    return {"videos": ref}
