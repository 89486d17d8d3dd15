"""The text-feedback flow: ``samples`` -> ``critiques`` and ``text_pairs``."""

from __future__ import annotations

from prefect import flow

from tasks import text_feedback as steps
from tasks.runner import ShardedStage, Where, run_sharded
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.shards import chunks
from vpo_core.stage_index import stage_inputs, stage_outputs
from vpo_core.tables import DataRef, read_table
from vpo_core.workdir import activate

TEXT_FEEDBACK = ShardedStage(
    "text-feedback", steps.shard, steps.merge,
    lambda o: {k: o[k] for k in ("critiques", "text_pairs")},
    lambda o: f"{o['stats']['to_render']} to render, {o['stats']['text_pairs']} text pairs")
LLM_SHARDS_AT_ONCE = 16  # all shards of a run share one limit: threads are cheap, idle slots not


@flow(name="text-feedback", log_prints=True)
def text_feedback_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
                       samples: DataRef | None = None) -> dict[str, DataRef]:
    """The judge critiques each sample; failing ones are refined into text pairs; samples
    judged "Yes" go on to rendering. One cached task per shard."""
    work = activate(config.work_dir)
    samples = stage_inputs(config, "text-feedback", samples=samples)["samples"]
    rows = read_table(samples, "samples").sort("query_id", "sample_index").to_dicts()
    shards = [{"samples": part, "index": i, "judge": config.judge, "checks": config.checks}
              for i, part in enumerate(chunks(rows, config.text_feedback.shard_size))]
    merged = run_sharded(TEXT_FEEDBACK, work, force, shards,
                         Where.of(config.placement, "text-feedback", LLM_SHARDS_AT_ONCE))
    refs = {k: merged[k] for k in ("critiques", "text_pairs")}
    print(f"text-feedback: {merged['stats']['to_render']:,} samples to render, "
          f"{refs['text_pairs'].rows:,} text pairs -> {refs['critiques'].path}")
    return stage_outputs(config, "text-feedback", refs)
