"""Batched sampling: many queries per generate call, each query's K samples the same alone,
in a batch of strangers and in another shard order; samples cut at the token budget are
marked ``truncated`` and text feedback leaves them alone; the vLLM backend keeps one engine
per process and sends a whole shard in one call."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import ClassVar

import polars as pl
import pytest

from vpo_core import optimizer
from vpo_core.config import LLMConfig, SampleConfig
from vpo_core.optimizer import Optimizer, Sampling
from vpo_core.sample.stage import query_seed, sample_shard
from vpo_core.tables import read_table
from vpo_core.text_feedback.stage import run_shard

QUERIES = [{"query_id": f"q{i}", "query": q} for i, q in enumerate([
    "a cute dog on the grass", "city lights at night -ar 16:9", "waves",
    "an astronaut riding a horse on mars, slow zoom", "a bowl of ramen, steam rising",
    "two people dancing tango in the rain at midnight", "cat", "a red fox in the snow"])]


@pytest.fixture(scope="module")
def model(bundled_models: Path) -> str:
    from vpo_core.models.bundled import bundled_model_dir

    return str(bundled_model_dir(bundled_models))


def _by_query(df: pl.DataFrame) -> dict[str, list[tuple[str | None, str]]]:
    return {q: list(zip(g["prompt"], g["status"], strict=True))
            for (q,), g in df.sort("sample_index").group_by("query_id")}


def test_a_querys_samples_do_not_depend_on_its_batch_or_shard(tmp_path: Path,
                                                               model: str) -> None:
    cfg = SampleConfig(k=3, max_new_tokens=12, batch_size=8)
    batch = read_table(sample_shard(QUERIES, model, cfg, 5, tmp_path / "batch", 0)["samples"])
    assert batch.height == 24 and set(batch["status"]) <= {"ok", "truncated", "empty"}
    alone = read_table(sample_shard(QUERIES[3:4], model, cfg, 5, tmp_path / "alone", 1)
                       ["samples"])
    reordered = read_table(sample_shard(
        QUERIES[::-1], model, cfg.model_copy(update={"batch_size": 3}), 5,
        tmp_path / "reordered", 2)["samples"])
    in_batch = _by_query(batch)
    assert _by_query(alone)["q3"] == in_batch["q3"]             # alone == in a batch of 8
    assert _by_query(reordered) == in_batch                     # other order, batches of 3
    assert len({p for p, _ in in_batch["q3"]}) > 1              # K different samples
    assert set(batch.filter(pl.col("query_id") == "q3")["seed"]) == {query_seed(5, "q3")}
    other_seed = read_table(sample_shard(QUERIES[3:4], model, cfg, 6, tmp_path / "s6", 0)
                            ["samples"])
    assert _by_query(other_seed)["q3"] != in_batch["q3"]


def test_greedy_optimize_is_the_same_in_any_batch(model: str) -> None:
    queries = [q["query"] for q in QUERIES]
    sampling = Sampling(max_new_tokens=10)
    together = Optimizer(model, batch_size=8).optimize(queries, sampling=sampling)
    one_by_one = Optimizer(model, batch_size=1).optimize(queries, sampling=sampling)
    assert together == one_by_one


def test_samples_cut_at_the_budget_are_truncated_and_not_critiqued(
        tmp_path: Path, model: str, judge: LLMConfig, fake_llm) -> None:
    cfg = SampleConfig(k=2, max_new_tokens=3)
    samples = read_table(sample_shard(QUERIES[:2], model, cfg, 0, tmp_path, 0)["samples"])
    assert samples["status"].to_list() == ["truncated"] * 4
    assert samples["prompt"].null_count() == 0                  # kept for inspection
    rows = samples.to_dicts()
    rows[0] = {**rows[0], "status": "ok"}                       # one complete sample
    out = read_table(run_shard(rows, 0, judge, tmp_path / "tf")["critiques"])
    assert out["critique_status"].to_list()[1:] == ["skipped:sample-truncated"] * 3
    assert out["critique_status"][0] != "skipped:sample-truncated"
    assert not any(out["render"].to_list()[1:])
    assert sum(fake_llm.fake.requests.values()) == 1 + (out["judgement"][0] == "no")


class _FakeVLLM:
    """Stands in for vLLM, which needs a GPU: records engines and calls."""

    engines: ClassVar[list[_FakeVLLM]] = []

    def __init__(self, model: str, dtype: str, seed: int) -> None:
        self.model, self.calls = model, []
        _FakeVLLM.engines.append(self)

    def chat(self, conversations: list, params: list, use_tqdm: bool) -> list:
        self.calls.append((conversations, params))
        return [types.SimpleNamespace(prompt_token_ids=[1] * 9, outputs=[
            types.SimpleNamespace(text=f" s{p.seed}-{j} ", token_ids=[1] * (2 + j),
                                  finish_reason="length" if j == p.n - 1 else "stop")
            for j in range(p.n)]) for p in params]


def test_vllm_backend_keeps_one_engine_and_sends_a_shard_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vllm = types.ModuleType("vllm")
    vllm.LLM = _FakeVLLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setattr(optimizer, "_VLLM_ENGINES", {})
    _FakeVLLM.engines = []
    cfg = SampleConfig(k=2, backend="vllm")
    first = read_table(sample_shard(QUERIES[:3], "m", cfg, 0, tmp_path, 0)["samples"])
    read_table(sample_shard(QUERIES[3:], "m", cfg, 0, tmp_path, 1)["samples"])
    [engine] = _FakeVLLM.engines                                # one engine for both shards
    assert [len(conv) for conv, _ in engine.calls] == [3, 5]    # one call per shard
    params = engine.calls[0][1]
    assert [p.seed for p in params] == [query_seed(0, f"q{i}") % 2**31 for i in range(3)]
    assert {p.n for p in params} == {2}
    assert first["status"].to_list() == ["ok", "truncated"] * 3  # finish_reason "length"
    assert first["prompt"][0] == f"s{params[0].seed}-0"
