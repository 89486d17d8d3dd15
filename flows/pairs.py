"""The pairs flow: ``text_pairs`` + ``rewards`` -> ``dpo_pairs`` (TRL conversational)."""

from __future__ import annotations

import time

from prefect import flow

from tasks import pairs as steps
from tasks.artifacts import publish_stage, stats_markdown
from tasks.caching import run_cached
from vpo_core.config import DEFAULT_CONFIG, PipelineConfig
from vpo_core.errors import StageFailed
from vpo_core.stage_index import stage_inputs, stage_outputs
from vpo_core.stages import spec
from vpo_core.tables import DataRef, read_table
from vpo_core.workdir import activate


@flow(name="pairs", log_prints=True)
def pairs_flow(config: PipelineConfig = DEFAULT_CONFIG, force: bool = False,
               critiques: DataRef | None = None, rewards: DataRef | None = None
               ) -> dict[str, DataRef]:
    """Video pairs (score gap above the margin, checklist dominance) merged with the text
    pairs (the refinements in ``critiques``), text first, one per query by default; the
    chosen side always passes the hard principle checks."""
    start, work = time.perf_counter(), activate(config.work_dir)
    given = stage_inputs(config, "pairs", critiques=critiques, rewards=rewards)
    critiques, rewards = given["critiques"], given["rewards"]
    out = run_cached(steps.build, work, force, stage="pairs", critiques=critiques,
                     rewards=rewards, cfg=config.pairs, checks=config.checks,
                     seed=config.seed)
    ref, stats = out["dpo_pairs"], dict(out["stats"])
    stats.pop("queries_without_pair")
    publish_stage("pairs", stats_markdown("pairs", stats, {"dpo_pairs": ref},
                                          time.perf_counter() - start),
                  read_table(ref).head(12).select(spec("pairs").summary).to_dicts())
    print(f"pairs: {ref.rows:,} DPO pairs ({stats['by_source']}) -> {ref.path}")
    if not ref.rows:
        raise StageFailed(
            f"pairs: no DPO pair from {stats['queries']} queries (reasons: "
            f"{stats['without_pair'] or 'no text pair, no scored video'}); DPO cannot train. "
            f"Look at the text-feedback critiques (is the judge answering in the template's "
            f"format?) and the score gaps against pairs.margin={stats['margin']}; "
            f"{ref.path} is kept.")
    return stage_outputs(config, "pairs", {"dpo_pairs": ref})
