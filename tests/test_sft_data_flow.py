"""sft-data as Prefect flows: resume after a kill, cache hits, the judge's safety re-check,
and a canary API key that must never be written anywhere."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)

from flows.curate import curate_flow
from flows.pipeline import pipeline_flow
from flows.sft_data import sft_data_flow
from vpo_core.config import LLMConfig, PipelineConfig, load_config
from vpo_core.curate.sources import bundled_queries
from vpo_core.prompts.templates import generation_messages
from vpo_core.tables import read_table

pytestmark = pytest.mark.usefixtures("prefect_server")
CANARY = "sk-canary-7f3a9b1c2d4e5f60718293a4b5c6d7e8"


def _config(tmp_path: Path, judge: LLMConfig, sft: int = 12, shard: int = 4) -> PipelineConfig:
    src = tmp_path / "queries.json"
    src.write_text(json.dumps(bundled_queries()[:200]))
    data = {"extends": "cpu-tiny", "work_dir": str(tmp_path / "work"),
            "judge": judge.model_dump(mode="json"),
            "curate": {"input": str(src), "split": {"sft": sft, "dpo": 4, "eval": 4}},
            "sft_data": {"shard_size": shard}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def _flow_runs(state) -> list:
    """The pipeline run and its sub-flow runs."""
    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(state.state_details.flow_run_id)
        runs = client.read_flow_runs()
    return [parent, *[r for r in runs if r.parent_task_run_id is not None
                      and r.start_time and r.start_time >= parent.start_time]]


def test_rerun_makes_no_new_requests(tmp_path: Path, judge: LLMConfig, fake_llm) -> None:
    cfg = _config(tmp_path, judge)
    first = sft_data_flow(cfg, queries=curate_flow(cfg)["queries"])
    sent = sum(fake_llm.fake.requests.values())
    again = sft_data_flow(cfg)
    assert sum(fake_llm.fake.requests.values()) == sent          # all cache hits
    assert again == first
    examples = read_table(first["sft_examples"])
    queries = read_table(curate_flow(cfg)["queries"])
    assert sorted(examples["query_id"]) == sorted(queries.filter(pl.col("split") == "sft")
                                                  ["query_id"])


def test_judge_rechecks_flagged_queries(tmp_path: Path, judge: LLMConfig, fake_llm) -> None:
    cfg = _config(tmp_path, judge, sft=40)
    queries = read_table(curate_flow(cfg)["queries"])
    checked = queries.filter(pl.col("safety_check").is_not_null())
    assert checked.height > 0
    assert set(checked["safety_check"]) <= {"confirmed", "overruled"}
    overruled = checked.filter(pl.col("safety_check") == "overruled")
    assert (~overruled["safety"]).all() and (overruled["safety_source"] == "llm").all()
    confirmed = checked.filter(pl.col("safety_check") == "confirmed")
    assert confirmed["safety"].all() and confirmed["safety_source"].str.ends_with("+llm").all()


def test_killed_run_resumes_without_redoing_finished_shards(tmp_path: Path, judge: LLMConfig,
                                                            fake_llm) -> None:
    fake_llm.fake.latency = 0.25     # two calls at a time: the shards end a second apart
    cfg = _config(tmp_path, judge.model_copy(update={"concurrency": 2}), sft=24, shard=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from flows.cli import main; main()", "sft-data",
         "--with-upstream", "--config", str(tmp_path / "config.yaml")],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard_dir = Path(cfg.work_dir) / "data" / "sft-data"
    deadline = time.time() + 240
    while len(list(shard_dir.glob("shard-*/*.parquet"))) < 2:
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)                   # the CLI and its Prefect server
    proc.wait()
    # oldest first: the newest file may have been killed before its task's result was
    # recorded, and is then made again from the call store (no new request, but its
    # cached_calls count the store's answers)
    files = sorted(shard_dir.glob("shard-*/*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    finished = [read_table(p) for p in files]
    assert 2 <= len(finished) < 6
    fake_llm.fake.latency = 0.0
    examples = read_table(sft_data_flow(cfg)["sft_examples"])
    assert examples.height == 24
    for shard in finished:                               # never asked again
        for query in shard["query"]:
            assert fake_llm.fake.requests[generation_messages(query)[0]["content"]] == 1
    assert examples.filter(pl.col("shard") == finished[0]["shard"][0]).equals(finished[0])


def test_canary_key_is_never_written(tmp_path: Path, judge: LLMConfig, fake_llm,
                                     monkeypatch) -> None:
    monkeypatch.setenv("VPO_TEST_JUDGE_KEY", CANARY)
    fake_llm.fake.api_key = CANARY                        # the server checks it
    fake_llm.fake.fault_rate = 0.2
    cfg = _config(tmp_path, judge.model_copy(update={"api_key_env": "VPO_TEST_JUDGE_KEY"}))
    state = pipeline_flow(cfg, check=False, until="sft-data", return_state=True)
    assert state.is_completed() and fake_llm.fake.outcomes["auth"] == 0
    for path in Path(cfg.work_dir).rglob("*"):            # Parquet, results, Prefect's DB
        if path.is_file() and not path.name.endswith((".safetensors", ".bin")):
            assert CANARY.encode() not in path.read_bytes(), path
    runs = _flow_runs(state)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs])))
        artifacts = client.read_artifacts()
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[r.id for r in runs])))
    assert logs and artifacts and tasks
    text = json.dumps([[log.message for log in logs], [a.data for a in artifacts],
                       [r.parameters for r in runs],
                       [t.model_dump(mode="json") for t in tasks]], default=str)
    assert CANARY not in text and "VPO_TEST_JUDGE_KEY" in text  # the name, not the value
