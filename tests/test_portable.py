"""A portable work directory: moved (or mounted elsewhere) it keeps every cache hit, and
the bundled files a step reads are part of its cache key by content."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from flows.curate import curate_flow
from flows.sft_data import sft_data_flow
from tasks.caching import function_code_version
from vpo_core.codeversion import DATA, ROOT
from vpo_core.config import LLMConfig, PipelineConfig, load_config
from vpo_core.curate.sources import bundled_queries
from vpo_core.prompts import templates
from vpo_core.workdir import activate

pytestmark = pytest.mark.usefixtures("prefect_server")


def _config(tmp_path: Path, judge: LLMConfig, work: Path) -> PipelineConfig:
    src = tmp_path / "queries.json"
    src.write_text(json.dumps(bundled_queries()[:120]))
    data = {"extends": "cpu-tiny", "work_dir": str(work), "judge": judge.model_dump(mode="json"),
            "curate": {"input": str(src), "split": {"sft": 6, "dpo": 2, "eval": 2},
                       "safety": {"llm_recheck": False}},
            "sft_data": {"shard_size": 3}}
    path = tmp_path / f"{work.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def _sft_data(cfg: PipelineConfig) -> dict:
    """sft-data on the queries curate makes (cached after the first call)."""
    return sft_data_flow(cfg, queries=curate_flow(cfg)["queries"])


def _mtimes(work: Path) -> dict[str, int]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns
            for p in (work / "data").rglob("*.parquet")}


def test_moved_work_directory_keeps_every_cache_hit(tmp_path: Path, judge: LLMConfig,
                                                    fake_llm) -> None:
    first = _sft_data(_config(tmp_path, judge, tmp_path / "work"))
    sent, before = sum(fake_llm.fake.requests.values()), _mtimes(tmp_path / "work")
    assert sent > 0 and first["sft_examples"].loc.startswith("data/sft-data/")

    shutil.move(tmp_path / "work", tmp_path / "moved")
    again = _sft_data(_config(tmp_path, judge, tmp_path / "moved"))
    assert sum(fake_llm.fake.requests.values()) == sent          # no call made again
    assert _mtimes(tmp_path / "moved") == before                  # nothing rewritten
    assert again == first                                         # the same references
    assert Path(again["sft_examples"].path).is_relative_to(tmp_path / "moved")
    assert again["sft_examples"].is_valid()


def test_edited_demonstrations_recompute_sft_data_not_curate(tmp_path: Path, judge: LLMConfig,
                                                            fake_llm) -> None:
    cfg = _config(tmp_path, judge, tmp_path / "work")
    _sft_data(cfg)
    curate_files = {k: v for k, v in _mtimes(tmp_path / "work").items()
                    if k.startswith("data/curate/")}
    sent = sum(fake_llm.fake.requests.values())
    demos = ROOT / DATA / "demonstrations.json"
    original = demos.read_text(encoding="utf-8")
    edited = json.loads(original)
    edited[0]["prompt"] += " The fox's tracks fill with falling snow."
    try:
        demos.write_text(json.dumps(edited, indent=2), encoding="utf-8")
        function_code_version.cache_clear()
        templates.demonstrations.cache_clear()
        _sft_data(cfg)
    finally:
        demos.write_text(original, encoding="utf-8")
        function_code_version.cache_clear()
        templates.demonstrations.cache_clear()
    assert sum(fake_llm.fake.requests.values()) > sent           # sft-data asked again
    after = _mtimes(tmp_path / "work")
    assert {k: after[k] for k in curate_files} == curate_files    # curate untouched
    assert len([k for k in after if k.startswith("data/sft-data/merge-")]) == 2


def test_references_are_relative_to_the_active_work_directory(tmp_path: Path) -> None:
    from vpo_core.tables import DataRef, ref_for

    work = activate(tmp_path / "a")
    inside = work.root / "data" / "x.txt"
    inside.parent.mkdir(parents=True)
    inside.write_text("x")
    outside = tmp_path / "y.txt"
    outside.write_text("y")
    ref = ref_for(inside)
    assert ref.loc == "data/x.txt" and ref_for(outside).loc == str(outside)
    activate(tmp_path / "b")
    assert ref.path == str(tmp_path / "b" / "data" / "x.txt")
    assert DataRef.model_validate(ref.model_dump()) == ref
