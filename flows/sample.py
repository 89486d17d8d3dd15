"""The sample flow: DPO queries + SFT model -> ``samples`` (K prompts per query)."""

from __future__ import annotations

import time

from prefect import flow

from flows.curate import curate_flow
from flows.train import train_sft_flow
from tasks import sample as steps
from tasks.artifacts import publish_stage, stats_markdown
from tasks.caching import run_cached, run_shards
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.shards import split_shards
from vpo_core.tables import DataRef, read_table
from vpo_core.workdir import WorkDir


@flow(name="sample", log_prints=True)
def sample_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                queries: DataRef | None = None, model: DataRef | None = None
                ) -> dict[str, DataRef]:
    """K prompts per DPO query from the policy (the SFT model unless ``model`` is given),
    one cached task per shard, seeded per query so a resumed run draws the same samples."""
    start, work = time.perf_counter(), WorkDir.at(config.work_dir)
    queries = queries or curate_flow(config)["queries"]
    model = model or train_sft_flow(config)["model"]
    shards = [{"rows": rows, "index": i, "model": model, "cfg": config.sample,
               "seed": config.seed}
              for i, rows in enumerate(split_shards(queries, "dpo", config.sample.shard_size))]
    outs = run_shards(steps.shard, work, force, stage="sample", shards=shards,
                      describe=lambda o: f"{o['stats']['queries']} queries")
    merged = run_cached(steps.merge, work, force, stage="sample",
                        shards=[o["samples"] for o in outs])
    ref = merged["samples"]
    publish_stage("sample", stats_markdown("sample", merged["stats"], {"samples": ref},
                                           time.perf_counter() - start),
                  read_table(ref).head(12).select("query", "sample_index", "prompt",
                                                   "status").to_dicts())
    print(f"sample: {ref.rows:,} samples of {merged['stats']['queries']:,} queries -> "
          f"{ref.path}")
    return {"samples": ref}
