"""Prefect tasks of the curate stage: each is one step of vpo_core.curate.stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from tasks.caching import run_cached, stage_task
from tasks.llm import judge_api_key
from vpo_core.config import (
    CurateConfig,
    FilterConfig,
    LLMConfig,
    NearDuplicateConfig,
    SafetyConfig,
    SplitConfig,
)
from vpo_core.curate import recheck, stage
from vpo_core.curate.sources import HF_PREFIX, fetch_hf_dataset, input_files
from vpo_core.tables import DataRef, ref_for
from vpo_core.workdir import WorkDir, current


@stage_task(name="curate-fetch-hf", retries=4)
def fetch_hf(spec: str, split: str, data_files: str | None, out_dir: str) -> dict[str, Any]:
    """Download a Hugging Face dataset once and keep it as Parquet in the work directory."""
    path = fetch_hf_dataset(spec, split, data_files, Path(out_dir) / "hf-cache",
                            Path(out_dir) / "input.parquet")
    return {"input": ref_for(path, table=None)}


@task(name="curate-hash-input")
def hash_input(spec: str) -> list[DataRef]:
    """Reference the local input files by content (a folder or a glob is read afresh each
    run, so a new file is picked up): the cache keys downstream use the hashes."""
    return [ref_for(path) for path in input_files(spec)]


def resolve_input(cfg: CurateConfig, work: WorkDir, force: bool) -> list[DataRef]:
    """The input files as references: local files, the bundled sample, or a fetched
    Hugging Face dataset."""
    if cfg.input.startswith(HF_PREFIX):
        return [run_cached(fetch_hf, work, force, stage="curate", spec=cfg.input,
                           split=cfg.hf_split, data_files=cfg.hf_data_files)["input"]]
    return hash_input(cfg.input)


@stage_task(name="curate-ingest")
def ingest(sources: list[DataRef], prompt_column: str, out_dir: str) -> dict[str, Any]:
    return stage.ingest([Path(s.path) for s in sources], prompt_column, Path(out_dir))


@stage_task(name="curate-clean")
def clean(raw: DataRef, filters: FilterConfig, near_duplicates: NearDuplicateConfig,
          seed: int, out_dir: str) -> dict[str, Any]:
    return stage.clean(raw, filters, near_duplicates, Path(out_dir), seed)


@stage_task(name="curate-label-safety")
def label(candidates: DataRef, safety: SafetyConfig, out_dir: str) -> dict[str, Any]:
    return stage.label(candidates, safety, Path(out_dir))


@stage_task(name="curate-recheck-safety")
def recheck_safety(labelled: DataRef, safety: SafetyConfig, split: SplitConfig, seed: int,
                   judge: LLMConfig, out_dir: str) -> dict[str, Any]:
    """The judge LLM re-checks the flagged queries the splits may use."""
    work = current()
    return recheck.recheck(labelled, safety, split, seed, judge, Path(out_dir),
                           judge_api_key(judge), str(work.models), work.root)


@stage_task(name="curate-split")
def split(labelled: DataRef, split: SplitConfig, seed: int, out_dir: str) -> dict[str, Any]:
    return stage.split(labelled, split, seed, Path(out_dir))
