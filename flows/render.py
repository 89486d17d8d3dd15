"""The render flow: prompts that passed the text check -> ``videos`` (MP4 + contact sheet
per prompt), one cached task per shard: inline, or with ``placement.render: gpu`` as
runs of the ``vpo-step/gpu`` deployment on the GPU workers (a worker's concurrency limit
keeps one model per GPU). The work directory must then be storage the workers share."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks import render as steps
from tasks.runner import ShardedStage, Where, run_sharded
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.shards import chunks
from vpo_core.stage_index import stage_inputs, stage_outputs
from vpo_core.tables import DataRef
from vpo_core.text_feedback.stage import to_render
from vpo_core.workdir import WorkDir, activate

RENDER = ShardedStage("render", steps.shard, steps.merge, lambda o: o["videos"],
                      lambda o: f"{o['videos'].rows} videos")


def render_prompts(config: PipelineConfig, work: WorkDir, force: bool,
                   rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Render ``rows`` ({query_id, query, sample_index, prompt}) as the render stage's
    shards, inline or on ``placement.render``: the samples here, evaluate's prompts too."""
    shards = [{"rows": part, "index": i, "cfg": config.render, "seed": config.seed}
              for i, part in enumerate(chunks(rows, config.render.shard_size))]
    return run_sharded(RENDER, work, force, shards, Where.of(config.placement, "render"))


@flow(name="render", log_prints=True)
def render_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                critiques: DataRef | None = None) -> dict[str, DataRef]:
    """Render every sample judged "Yes" with the configured text-to-video pipeline."""
    work = activate(config.work_dir)
    critiques = stage_inputs(config, "render", critiques=critiques)["critiques"]
    merged = render_prompts(config, work, force,
                            to_render(critiques, config.text_feedback.gate_render))
    ref = merged["videos"]
    print(f"render: {ref.rows:,} videos ({merged['stats']['status']}) -> {ref.path}")
    return stage_outputs(config, "render", {"videos": ref})
