"""The score flow: ``videos`` -> ``rewards`` with the configured reward backend."""

from __future__ import annotations

import time

from prefect import flow

from flows.render import render_flow
from tasks import score as steps
from tasks.artifacts import publish_stage, stats_markdown
from tasks.caching import run_cached, run_shards
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.tables import DataRef, read_table
from vpo_core.workdir import WorkDir


@flow(name="score", log_prints=True)
def score_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
               videos: DataRef | None = None) -> dict[str, DataRef]:
    """Score each rendered video (frame metrics, a checklist, a vision LLM or
    VisionReward), one cached task per shard of videos."""
    start, work = time.perf_counter(), WorkDir.at(config.work_dir)
    videos = videos or render_flow(config)["videos"]
    size = config.score.shard_size
    shards = [{"videos": videos, "lo": lo, "hi": min(lo + size, videos.rows),
               "cfg": config.score, "judge": config.judge}
              for lo in range(0, videos.rows or 0, size)]
    outs = run_shards(steps.shard, work, force, stage="score", shards=shards,
                      describe=lambda o: f"{o['rewards'].rows} videos")
    merged = run_cached(steps.merge, work, force, stage="score",
                        shards=[o["rewards"] for o in outs])
    ref = merged["rewards"]
    publish_stage("score", stats_markdown("score", merged["stats"], {"rewards": ref},
                                          time.perf_counter() - start),
                  read_table(ref).head(12).select("prompt", "score", "metrics",
                                                   "status").to_dicts())
    print(f"score: {ref.rows:,} videos scored with {config.score.backend} "
          f"({merged['stats']['status']}) -> {ref.path}")
    return {"rewards": ref}
