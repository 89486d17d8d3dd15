"""evaluate.video through the render and score stages' own steps: every method's prompt
of every round becomes a render-shard and a score-shard task run (cached per shard,
placed like the stages'), and the evaluation's own task only assembles the tables."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.curate import curate_flow
from flows.evaluate import evaluate_flow
from vpo_core.config import LLMConfig, PipelineConfig, SplitConfig
from vpo_core.tables import read_table

pytestmark = pytest.mark.usefixtures("prefect_server")


def _config(work: Path, judge: LLMConfig) -> PipelineConfig:
    cfg = PipelineConfig(work_dir=work, judge=judge)
    cfg.curate.split = SplitConfig(sft=2, dpo=2, eval=2)
    cfg.curate.safety.llm_recheck = False
    cfg.evaluate.video = True
    cfg.render.shard_size = 2
    cfg.score.shard_size = 2
    return cfg


@flow
def _evaluate(cfg: PipelineConfig) -> dict:
    return evaluate_flow(cfg, queries=curate_flow(cfg)["queries"], models={})


def _task_runs(parent_id) -> list:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        ids = {parent_id, *[r.id for r in runs if r.parent_task_run_id is not None]}
        return client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=list(ids))))


def test_evaluate_videos_are_render_and_score_step_runs(tmp_path: Path, judge: LLMConfig,
                                                        fake_llm) -> None:
    cfg = _config(tmp_path / "work", judge)
    state = _evaluate(cfg, return_state=True)
    out = state.result()
    rewards = read_table(out["eval_rewards"], "rewards")
    # two held-out queries x (original, few-shot): one video each, scored
    assert rewards.height == 4 and (rewards["status"] == "ok").all()
    assert sorted({q.split("/")[0] for q in rewards["query_id"]}) == ["few-shot", "original"]
    videos = read_table(out["eval_videos"], "videos")
    assert videos["video_path"].map_elements(lambda p: Path(p).is_file(),
                                             return_dtype=pl.Boolean).all()
    names = [t.name for t in _task_runs(state.state_details.flow_run_id)]
    assert sum(n.startswith("render-shard") for n in names) == 2      # 4 videos, 2 a shard
    assert sum(n.startswith("score-shard") for n in names) == 2
    assert any(n.startswith("evaluate-video-report") for n in names)
    report = Path(out["eval_report"].path).read_text()
    assert "## Table 1: video quality through the reward (MonetBench columns)" in report
    assert "| original | 2 |" in report and "| few-shot | 2 |" in report

    mtimes = {p: Path(p).stat().st_mtime_ns for p in videos["video_path"]}
    again = _evaluate(cfg)                                            # all cached
    assert again["eval_rewards"] == out["eval_rewards"]
    assert {p: Path(p).stat().st_mtime_ns for p in videos["video_path"]} == mtimes
