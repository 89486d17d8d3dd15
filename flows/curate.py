"""The curate flow: VidProM (or any query file) -> ``queries`` and ``rejects``."""

from __future__ import annotations

from prefect import flow

from tasks import curate as steps
from tasks.artifacts import publish_stage
from tasks.caching import run_cached
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.curate.stage import sample_rows, summary_markdown
from vpo_core.stage_index import stage_outputs
from vpo_core.tables import DataRef
from vpo_core.workdir import activate


@flow(name="curate", log_prints=True)
def curate_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False
                ) -> dict[str, DataRef]:
    """Normalise, filter, deduplicate, label and split the user queries (paper §3.1).

    Each step is a cached task keyed on its inputs' content: a re-run with the same input
    and configuration is all cache hits; ``force`` recomputes every step.
    """
    work, cfg = activate(config.work_dir), config.curate
    sources = steps.resolve_input(cfg, work, force)
    ingest = run_cached(steps.ingest, work, force, stage="curate", sources=sources,
                        prompt_column=cfg.prompt_column)
    clean = run_cached(steps.clean, work, force, stage="curate", raw=ingest["raw"],
                       filters=cfg.filters, near_duplicates=cfg.near_duplicates,
                       seed=config.seed)
    label = run_cached(steps.label, work, force, stage="curate",
                       candidates=clean["candidates"], safety=cfg.safety)
    stats = {"ingest": ingest["stats"], "clean": clean["stats"], "label": label["stats"]}
    if cfg.safety.llm_recheck:
        label = run_cached(steps.recheck_safety, work, force, stage="curate",
                           labelled=label["labelled"], safety=cfg.safety, split=cfg.split,
                           seed=config.seed, judge=config.judge)
        stats["recheck"] = label["stats"]
    split = run_cached(steps.split, work, force, stage="curate", labelled=label["labelled"],
                       split=cfg.split, seed=config.seed)
    stats["split"] = split["stats"]
    outputs = {"queries": split["queries"], "rejects": clean["rejects"]}
    publish_stage("curate", summary_markdown(stats, outputs), sample_rows(outputs["queries"]))
    print(f"curate: {outputs['queries'].rows:,} queries -> {outputs['queries'].path}; "
          f"{outputs['rejects'].rows:,} rejects -> {outputs['rejects'].path}")
    return stage_outputs(config, "curate", outputs)
