"""The score flow: ``videos`` -> ``rewards`` with the configured reward backend."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks import score as steps
from tasks.runner import ShardedStage, Where, run_sharded
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.stage_index import stage_inputs, stage_outputs
from vpo_core.tables import DataRef, ref_for
from vpo_core.workdir import WorkDir, activate

SCORE = ShardedStage("score", steps.shard, steps.merge, lambda o: o["rewards"],
                     lambda o: f"{o['rewards'].rows} videos")


def score_videos(config: PipelineConfig, work: WorkDir, force: bool, videos: DataRef
                 ) -> dict[str, Any]:
    """Score ``videos`` as the score stage's shards, inline or on ``placement.score``: the
    rendered samples here, evaluate's videos too."""
    cfg = config.score
    answers = ref_for(cfg.answers_file) if cfg.answers_file else None  # keyed by content
    cfg = cfg.model_copy(update={"answers_file": None})
    shards = [{"videos": videos, "lo": lo, "hi": min(lo + cfg.shard_size, videos.rows),
               "cfg": cfg, "judge": config.judge, "answers": answers}
              for lo in range(0, videos.rows or 0, cfg.shard_size)]
    return run_sharded(SCORE, work, force, shards, Where.of(config.placement, "score"))


@flow(name="score", log_prints=True)
def score_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
               videos: DataRef | None = None) -> dict[str, DataRef]:
    """Score each rendered video (frame metrics, a checklist, a vision LLM or
    VisionReward), one cached task per shard of videos."""
    work = activate(config.work_dir)
    videos = stage_inputs(config, "score", videos=videos)["videos"]
    merged = score_videos(config, work, force, videos)
    ref = merged["rewards"]
    print(f"score: {ref.rows:,} videos scored with {config.score.backend} "
          f"({merged['stats']['status']}) -> {ref.path}")
    return stage_outputs(config, "score", {"rewards": ref})
