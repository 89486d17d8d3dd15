"""The preference-data stages as Prefect flows on the embedded default (bundled queries and
model, tiny CogVideoX, frame metrics), with the judge on the real local OpenAI server:
every output has its schema, pairs load into TRL's format, a re-run is all cache hits,
and a re-run of the render stage reuses the rendered videos."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
from datasets import load_dataset

from flows.curate import curate_flow
from flows.pairs import pairs_flow
from flows.render import render_flow
from flows.sample import sample_flow
from flows.score import score_flow
from flows.text_feedback import text_feedback_flow
from vpo_core.config import LLMConfig, PipelineConfig, SplitConfig
from vpo_core.models.bundled import bundled_model_dir
from vpo_core.tables import read_table, ref_for_dir

pytestmark = pytest.mark.usefixtures("prefect_server")


def _run(cfg: PipelineConfig, model, force_render: bool = False) -> dict:
    queries = curate_flow(cfg)["queries"]
    samples = sample_flow(cfg, queries=queries, model=model)["samples"]
    feedback = text_feedback_flow(cfg, samples=samples)
    videos = render_flow(cfg, force=force_render, critiques=feedback["critiques"])["videos"]
    rewards = score_flow(cfg, videos=videos)["rewards"]
    pairs = pairs_flow(cfg, critiques=feedback["critiques"], rewards=rewards)["dpo_pairs"]
    return {"samples": samples, **feedback, "videos": videos, "rewards": rewards,
            "dpo_pairs": pairs}


def test_preference_stages_end_to_end_and_resume(tiny_config: PipelineConfig,
                                                 judge: LLMConfig, fake_llm,
                                                 bundled_models: Path) -> None:
    cfg = tiny_config.model_copy(update={"judge": judge})
    cfg.curate.split = SplitConfig(sft=2, dpo=3, eval=1)
    cfg.sample.k, cfg.sample.max_new_tokens, cfg.sample.shard_size = 2, 160, 2
    cfg.render.shard_size = 2
    model = ref_for_dir(bundled_model_dir(bundled_models))
    out = _run(cfg, model)

    samples = read_table(out["samples"], "samples")
    assert samples.height == 6 and samples["query_id"].n_unique() == 3
    critiques = read_table(out["critiques"], "critiques")
    assert critiques.height == 6                                   # every sample judged
    videos = read_table(out["videos"], "videos")
    assert videos.height == int(critiques["render"].sum()) > 0     # the "Yes" ones
    assert videos["status"].to_list() == ["ok"] * videos.height
    rewards = read_table(out["rewards"], "rewards")
    assert rewards.height == videos.height and rewards["score"].is_not_null().all()
    assert set(rewards["backend"]) == {"frame-metrics"}
    text_pairs = read_table(out["text_pairs"], "text_pairs")
    pairs = read_table(out["dpo_pairs"], "dpo_pairs")
    assert pairs["query_id"].n_unique() == pairs.height            # one pair per query
    assert set(pairs.filter(pl.col("source") == "text")["query_id"]) == \
        set(text_pairs["query_id"])                                # text pairs come first
    video = pairs.filter(pl.col("source") == "video")
    assert ((video["chosen_score"] - video["rejected_score"]) > cfg.pairs.margin).all()
    trl = load_dataset("parquet", data_files=out["dpo_pairs"].path, split="train")
    assert {"prompt", "chosen", "rejected"} <= set(trl.column_names)

    mtimes = [os.stat(p).st_mtime_ns for p in videos["video_path"]]
    samples_before = fake_llm.fake.requests.copy()
    assert _run(cfg, model) == out                                 # all cache hits
    assert fake_llm.fake.requests == samples_before                # no judge call again
    forced = _run(cfg, model, force_render=True)                   # render tasks re-run...
    assert read_table(forced["videos"])["video_path"].to_list() == videos["video_path"]\
        .to_list()
    assert [os.stat(p).st_mtime_ns for p in videos["video_path"]] == mtimes  # ...reuse MP4s
