"""The text-feedback flow: ``samples`` -> ``critiques`` and ``text_pairs``."""

from __future__ import annotations

import time

from prefect import flow

from flows.sample import sample_flow
from tasks import text_feedback as steps
from tasks.artifacts import publish_stage, stats_markdown
from tasks.caching import run_cached, run_shards
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.shards import chunks
from vpo_core.tables import DataRef, read_table
from vpo_core.workdir import WorkDir


@flow(name="text-feedback", log_prints=True)
def text_feedback_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                       samples: DataRef | None = None) -> dict[str, DataRef]:
    """The judge critiques each sample; failing ones are refined into text pairs; samples
    judged "Yes" go on to rendering. One cached task per shard."""
    start, work = time.perf_counter(), WorkDir.at(config.work_dir)
    samples = samples or sample_flow(config)["samples"]
    rows = read_table(samples, "samples").sort("query_id", "sample_index").to_dicts()
    shards = [{"samples": part, "index": i, "judge": config.judge,
               "model_cache": str(work.models)}
              for i, part in enumerate(chunks(rows, config.text_feedback.shard_size))]
    outs = run_shards(steps.shard, work, force, stage="text-feedback", shards=shards,
                      describe=lambda o: f"{o['stats']['to_render']} to render, "
                      f"{o['stats']['text_pairs']} text pairs")
    merged = run_cached(steps.merge, work, force, stage="text-feedback",
                        shards=[{k: o[k] for k in ("critiques", "text_pairs")} for o in outs])
    refs = {k: merged[k] for k in ("critiques", "text_pairs")}
    publish_stage("text-feedback", stats_markdown("text-feedback", merged["stats"], refs,
                                                  time.perf_counter() - start),
                  read_table(refs["critiques"]).head(12).select(
                      "query", "prompt", "judgement", "refined", "refine_status").to_dicts())
    print(f"text-feedback: {merged['stats']['to_render']:,} samples to render, "
          f"{refs['text_pairs'].rows:,} text pairs -> {refs['critiques'].path}")
    return refs
