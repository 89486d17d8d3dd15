"""Every call made once, through the flows and a real server's request counter: a killed
stage re-run makes only the calls it had not made, a grown split only the new queries'
calls, a new file in the input folder only its new queries' calls, and a changed
template or judge model recomputes what it affects."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from flows.curate import curate_flow
from flows.sft_data import sft_data_flow
from flows.text_feedback import text_feedback_flow
from vpo_core.config import LLMConfig, PipelineConfig, load_config
from vpo_core.curate.sources import bundled_queries
from vpo_core.llm.store import SQLITE_FILE
from vpo_core.tables import read_table

pytestmark = pytest.mark.usefixtures("prefect_server")



def _sft_data(cfg, **kwargs):
    """sft-data on the queries curate makes (curate is cached after the first call)."""
    return sft_data_flow(cfg, queries=curate_flow(cfg)["queries"], **kwargs)

def _config(tmp_path: Path, judge: LLMConfig, source: Path, sft: int = 16, shard: int = 4,
            recheck: bool = False) -> PipelineConfig:
    data = {"extends": "cpu-tiny", "work_dir": str(tmp_path / "work"),
            "judge": judge.model_dump(mode="json"),
            "curate": {"input": str(source), "split": {"sft": sft, "dpo": 4, "eval": 4},
                       "safety": {"llm_recheck": recheck}},
            "sft_data": {"shard_size": shard}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def _queries(tmp_path: Path, start: int, stop: int, name: str = "queries.json") -> Path:
    path = tmp_path / "input" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bundled_queries()[start:stop]))
    return path


def _sent(fake) -> int:
    return sum(fake.requests.values())


def _stored(cfg: PipelineConfig) -> int:
    with sqlite3.connect(Path(cfg.work_dir) / SQLITE_FILE) as db:
        return db.execute("SELECT count(*) FROM calls").fetchone()[0]


def test_a_killed_stage_rerun_makes_only_the_missing_calls(tmp_path: Path, judge: LLMConfig,
                                                           fake_llm) -> None:
    fake_llm.fake.latency = 0.2
    cfg = _config(tmp_path, judge.model_copy(update={"concurrency": 4}),
                  _queries(tmp_path, 0, 200), sft=24, shard=12, recheck=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from flows.cli import main; main()", "sft-data",
         "--with-upstream", "--config", str(tmp_path / "config.yaml")],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    generations = 0
    while generations < 10:                    # in the middle of the first shard
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.05)
        generations = sum(v for k, v in fake_llm.fake.requests.items() if "[[start]]" in k)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((Path(cfg.work_dir) / "data" / "sft-data").glob("shard-*/*.parquet"))
    stored, sent = _stored(cfg), _sent(fake_llm.fake)
    assert stored > 10
    fake_llm.fake.latency = 0.0
    examples = read_table(_sft_data(cfg)["sft_examples"])
    assert examples.height == 24 and (examples["status"] != "error:server").all()
    made = _sent(fake_llm.fake) - sent
    assert made == _stored(cfg) - stored                   # each request a new answer
    assert examples["cached_calls"].sum() + made >= examples["calls"].sum()
    assert max(fake_llm.fake.conversations.values()) <= 2  # in flight at the kill: twice
    assert sum(v == 2 for v in fake_llm.fake.conversations.values()) <= 4


def test_growing_the_split_makes_only_the_new_queries_calls(tmp_path: Path, judge: LLMConfig,
                                                            fake_llm) -> None:
    source = _queries(tmp_path, 0, 200)
    first = read_table(_sft_data(_config(tmp_path, judge, source, sft=16))["sft_examples"])
    sent = _sent(fake_llm.fake)
    grown = read_table(_sft_data(_config(tmp_path, judge, source, sft=20))["sft_examples"])
    new = grown.filter(~pl.col("query_id").is_in(first["query_id"].implode()))
    assert grown.height == 20 and new.height == 4
    assert _sent(fake_llm.fake) - sent == new["calls"].sum()     # 25% more: their calls only
    old = grown.filter(pl.col("query_id").is_in(first["query_id"].implode()))
    assert (old["cached_calls"] == old["calls"]).all() and (new["cached_calls"] == 0).all()
    assert max(fake_llm.fake.conversations.values()) == 1


def test_a_new_file_in_the_input_folder_costs_only_its_new_queries(
        tmp_path: Path, judge: LLMConfig, fake_llm) -> None:
    folder = _queries(tmp_path, 0, 150, "2026-01-01.json").parent
    cfg = _config(tmp_path, judge, folder, sft=16, recheck=True)
    first = read_table(_sft_data(cfg)["sft_examples"])
    sent = _sent(fake_llm.fake)
    assert sent > 0
    _queries(tmp_path, 100, 300, "2026-01-02.json")       # the nightly dump: 100 new queries
    second = read_table(_sft_data(cfg)["sft_examples"])
    assert _sent(fake_llm.fake) > sent                    # the new queries were asked about
    assert max(fake_llm.fake.conversations.values()) == 1  # and nothing twice
    kept = second.filter(pl.col("query_id").is_in(first["query_id"].implode()))
    assert (kept["cached_calls"] == kept["calls"]).all()
    new = second.filter(~pl.col("query_id").is_in(first["query_id"].implode()))
    assert (new["cached_calls"] == 0).all()


def test_a_changed_template_or_judge_model_recomputes(tmp_path: Path, judge: LLMConfig,
                                                      fake_llm, monkeypatch) -> None:
    from vpo_core.prompts import templates

    cfg = _config(tmp_path, judge, _queries(tmp_path, 0, 200), sft=8)
    first = read_table(_sft_data(cfg)["sft_examples"])
    sent = _sent(fake_llm.fake)
    monkeypatch.setattr(templates, "CRITIQUE_TEMPLATE",
                        templates.CRITIQUE_TEMPLATE.replace("Final Judgement",
                                                            "Overall, Final Judgement"))
    again = read_table(_sft_data(cfg, force=True)["sft_examples"])
    made = _sent(fake_llm.fake) - sent
    assert made == again["calls"].sum() - first.height    # generations from the store
    assert (again["cached_calls"] == 1).all()
    sent = _sent(fake_llm.fake)
    other = cfg.model_copy(update={"judge": judge.model_copy(update={"model":
                                                                     "openai/fake-judge-2"})})
    third = read_table(_sft_data(other)["sft_examples"])
    assert _sent(fake_llm.fake) - sent == third["calls"].sum()   # another judge: all again
    assert (third["cached_calls"] == 0).all()


def test_text_feedback_rerun_with_new_shards_asks_nothing(tmp_path: Path, judge: LLMConfig,
                                                          fake_llm) -> None:
    """Another shard layout: every shard task is new to Prefect's cache, every answer is
    in the call store."""
    from vpo_core.tables import write_table

    rows = [{"query_id": f"q{i:02d}", "query": f"a red fox number {i} in the snow",
             "sample_index": j, "prompt": f"A red fox {i}.{j} runs through fresh snow.",
             "status": "ok", "model": "m", "safety": False, "seed": 1}
            for i in range(6) for j in range(2)]
    cfg = _config(tmp_path, judge, _queries(tmp_path, 0, 200))
    samples = write_table(pl.DataFrame(rows), Path(cfg.work_dir) / "samples.parquet",
                          "samples")
    cfg.text_feedback.shard_size = 4
    first = read_table(text_feedback_flow(cfg, samples=samples)["critiques"])
    sent = _sent(fake_llm.fake)
    cfg.text_feedback.shard_size = 5
    again = read_table(text_feedback_flow(cfg, samples=samples)["critiques"])
    assert _sent(fake_llm.fake) == sent
    assert (again["cached_calls"] == again["calls"]).all() and first["calls"].sum() > 12
    assert again.drop("cached_calls", "cost", "cost_saved").equals(
        first.drop("cached_calls", "cost", "cost_saved"))


def test_answers_the_store_cannot_take_stay_in_the_stage_output(
        tmp_path: Path, judge: LLMConfig, fake_llm, caplog) -> None:
    from vpo_core.llm.store import SQLiteStore

    patient = judge.model_copy(update={"timeout_s": 60.0})   # no retry on a busy machine
    cfg = _config(tmp_path, patient, _queries(tmp_path, 0, 200), sft=8)
    store_file = Path(cfg.work_dir) / SQLITE_FILE
    SQLiteStore(store_file).db.close()                  # the file and table a run makes
    with sqlite3.connect(store_file) as db:             # then every write fails
        db.execute("CREATE TRIGGER full BEFORE INSERT ON calls "
                   "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    with caplog.at_level("WARNING", logger="vpo_core.llm"):
        examples = read_table(_sft_data(cfg)["sft_examples"])
    assert examples.height == 8 and not examples["status"].str.contains("error").any()
    assert examples["final_prompt"].is_not_null().sum() > 0   # the answers are in the output
    assert _sent(fake_llm.fake) == examples["calls"].sum() and _stored(cfg) == 0
    assert "could not be stored" in caplog.text and "disk is full" in caplog.text
