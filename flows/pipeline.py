"""The end-to-end VPO pipeline: curate → sft-data → train-sft → (sample → text-feedback →
render → score → pairs → train-dpo) × iterations → evaluate. Each stage is a sub-flow
whose tasks are cached on content, so a re-run (or a Retry in the UI) skips every
finished shard and stage; ``placement`` sends the GPU stages to GPU workers. The
preflight checks come first, so a configuration that cannot run fails in seconds."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.chain import run_chain
from tasks.preflight import preflight
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig, Stage
from vpo_core.workdir import activate


@flow(name="vpo-pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig = DEFAULT_CONFIG, force: list[Stage] | None = None,
                  check: bool = True, until: Stage | None = None) -> dict[str, Any]:
    """Run every stage in order (through ``until`` when given); ``force`` lists stages to
    recompute. ``config.iterations`` rounds of sampling and DPO each start from the latest
    model. ``check`` runs the preflight checks first (findings in the ``preflight``
    artifact; errors stop the run)."""
    if check:
        preflight(config)
    activate(config.work_dir)
    return run_chain(config, until, forced=frozenset(force or [])).outputs
