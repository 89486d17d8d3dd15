"""The sft-data flow: curated SFT queries -> ``sft_examples`` (teacher prompts, judge
critiques, refinements)."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.curate import curate_flow
from tasks import sft_data as steps
from tasks.artifacts import publish_stage
from tasks.caching import run_cached
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.sft_data.stage import sample_rows, summary_markdown
from vpo_core.tables import DataRef
from vpo_core.workdir import WorkDir


@flow(name="sft-data", log_prints=True)
def sft_data_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                  queries: DataRef | None = None) -> dict[str, DataRef]:
    """Few-shot generation, principle critique and refinement for the SFT split, one cached
    task per shard: a re-run after a crash redoes only the unfinished shards."""
    logger = get_run_logger()
    start = time.perf_counter()
    work = WorkDir.at(config.work_dir)
    if queries is None:
        queries = curate_flow(config)["queries"]
    shards = steps.plan(queries, config.sft_data.shard_size)
    progress = create_progress_artifact(0.0, key="sft-data-progress",
                                        description="sft-data: shards done")
    done = []
    for index, rows in enumerate(shards):
        out = run_cached(steps.shard, work, force, stage="sft-data", rows=rows, index=index,
                         judge=config.judge, cfg=config.sft_data, model_cache=str(work.models))
        done.append(out["examples"])
        update_progress_artifact(progress, 100.0 * len(done) / len(shards))
        logger.info("sft-data: shard %d/%d done (%d queries, %d usable)", len(done),
                    len(shards), out["stats"]["rows"], out["stats"]["usable"])
    merged = run_cached(steps.merge, work, force, stage="sft-data", shards=done)
    ref = merged["sft_examples"]
    publish_stage("sft-data", summary_markdown(merged["stats"], time.perf_counter() - start,
                                               ref, config.judge.model), sample_rows(ref))
    print(f"sft-data: {merged['stats']['usable']:,} usable of {ref.rows:,} -> {ref.path}")
    return {"sft_examples": ref}
