"""The sample flow: DPO queries + SFT model -> ``samples`` (K prompts per query)."""

from __future__ import annotations

from prefect import flow

from tasks import sample as steps
from tasks.runner import ShardedStage, Where, run_sharded
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.shards import split_shards
from vpo_core.stage_index import stage_inputs, stage_outputs
from vpo_core.tables import DataRef
from vpo_core.workdir import activate

SAMPLE = ShardedStage("sample", steps.shard, steps.merge, lambda o: o["samples"],
                      lambda o: f"{o['stats']['queries']} queries")


@flow(name="sample", log_prints=True)
def sample_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                queries: DataRef | None = None, model: DataRef | None = None
                ) -> dict[str, DataRef]:
    """K prompts per DPO query from the policy (the SFT model unless ``model`` is given),
    one cached task per shard, seeded per query so a resumed run draws the same samples."""
    work = activate(config.work_dir)
    given = stage_inputs(config, "sample", queries=queries, model=model)
    queries, model = given["queries"], given["model"]
    shards = [{"rows": rows, "index": i, "model": model, "cfg": config.sample,
               "seed": config.seed}
              for i, rows in enumerate(split_shards(queries, "dpo", config.sample.shard_size))]
    merged = run_sharded(SAMPLE, work, force, shards, Where.of(config.placement, "sample"))
    ref = merged["samples"]
    print(f"sample: {ref.rows:,} samples of {merged['stats']['queries']:,} queries -> "
          f"{ref.path}")
    return stage_outputs(config, "sample", {"samples": ref})
