"""The end-to-end VPO pipeline. Stages run as sub-flows, each resumable from the cache."""

from __future__ import annotations

from prefect import flow

from flows.curate import curate_flow
from flows.sft_data import sft_data_flow
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig, Stage
from vpo_core.tables import DataRef


@flow(name="vpo-pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig = DEFAULT_CONFIG, force: list[Stage] | None = None
                  ) -> dict[str, dict[str, DataRef]]:
    """Run the stages that exist, in order; ``force`` lists stages to recompute."""
    forced = set(force or [])
    curated = curate_flow(config, force=Stage.curate in forced)
    sft = sft_data_flow(config, force=Stage.sft_data in forced, queries=curated["queries"])
    return {Stage.curate.value: curated, Stage.sft_data.value: sft}
