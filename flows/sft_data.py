"""The sft-data flow: curated SFT queries -> ``sft_examples`` (teacher prompts, judge
critiques, refinements)."""

from __future__ import annotations

from prefect import flow

from tasks import sft_data as steps
from tasks.runner import ShardedStage, Where, run_sharded
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.sft_data.stage import summary_markdown
from vpo_core.stage_index import stage_inputs, stage_outputs
from vpo_core.tables import DataRef
from vpo_core.workdir import activate

SFT_DATA = ShardedStage("sft-data", steps.shard, steps.merge, lambda o: o["examples"],
                        lambda o: f"{o['stats']['rows']} queries, {o['stats']['usable']} "
                        "usable")
LLM_SHARDS_AT_ONCE = 16  # all shards of a run share one limit: threads are cheap, idle slots not


@flow(name="sft-data", log_prints=True)
def sft_data_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                  queries: DataRef | None = None) -> dict[str, DataRef]:
    """Few-shot generation, principle critique and refinement for the SFT split, one cached
    task per shard: a re-run after a crash redoes only the unfinished shards."""
    work = activate(config.work_dir)
    queries = stage_inputs(config, "sft-data", queries=queries)["queries"]
    shards = [{"rows": rows, "index": i, "judge": config.judge, "cfg": config.sft_data,
               "checks": config.checks}
              for i, rows in enumerate(steps.plan(queries, config.sft_data.shard_size))]
    merged = run_sharded(
        SFT_DATA, work, force, shards,
        Where.of(config.placement, "sft-data", LLM_SHARDS_AT_ONCE),
        summary=lambda m, secs: summary_markdown(m["stats"], secs, m["sft_examples"],
                                                 config.judge.model))
    ref = merged["sft_examples"]
    print(f"sft-data: {merged['stats']['usable']:,} usable of {ref.rows:,} -> {ref.path}")
    return stage_outputs(config, "sft-data", {"sft_examples": ref})
