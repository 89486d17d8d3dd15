"""The sample and text-feedback stages: K seeded samples per query from a real model, and
the judge's critique, refinement and text pairs against the real local OpenAI server."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from vpo_core.config import LLMConfig, SampleConfig
from vpo_core.errors import ConfigError, StageFailed, TransientError
from vpo_core.models.bundled import bundled_model_dir
from vpo_core.optimizer import Generation
from vpo_core.sample.stage import query_seed, sample_shard, vllm_generator
from vpo_core.tables import read_table
from vpo_core.testing.openai_server import default_responder
from vpo_core.text_feedback.stage import merge, run_shard, to_render

QUERIES = [{"query_id": "q1", "query": "a cute dog on the grass"},
           {"query_id": "q2", "query": "city lights at night -ar 16:9"}]


@pytest.fixture(scope="module")
def model(bundled_models: Path) -> str:
    return str(bundled_model_dir(bundled_models))


def test_k_samples_per_query_are_seeded_per_query(tmp_path: Path, model: str) -> None:
    cfg = SampleConfig(k=3, max_new_tokens=16)
    first = read_table(sample_shard(QUERIES, model, cfg, 0, tmp_path / "a", 0)["samples"])
    assert first.height == 6 and set(first["status"]) <= {"ok", "truncated"}  # 16 tokens
    assert first.filter(pl.col("query_id") == "q1")["sample_index"].to_list() == [0, 1, 2]
    assert first.filter(pl.col("query_id") == "q1")["prompt"].n_unique() > 1  # sampled
    assert first["seed"].to_list()[:3] == [query_seed(0, "q1")] * 3
    alone = read_table(sample_shard(QUERIES[1:], model, cfg, 0, tmp_path / "b", 1)["samples"])
    assert alone["prompt"].to_list() == first.filter(pl.col("query_id") == "q2")["prompt"] \
        .to_list()                                      # same samples in any shard
    other = read_table(sample_shard(QUERIES[:1], model, cfg, 1, tmp_path / "c", 0)["samples"])
    assert other["prompt"].to_list() != first["prompt"].to_list()[:3]


def test_a_failing_query_keeps_its_rows_with_the_reason(tmp_path: Path) -> None:
    def generate(queries: list[str], seeds: list[int]) -> list[list[Generation]]:
        if any("night" in q for q in queries):
            raise RuntimeError("CUDA out of memory")
        return [[Generation("a prompt", False, 2), Generation("", False, 0)] for _ in queries]

    out = read_table(sample_shard(QUERIES, "m", SampleConfig(k=2), 0, tmp_path, 0,
                                  generate=generate)["samples"])
    assert out["status"].to_list() == ["ok", "empty", "error:RuntimeError",
                                       "error:RuntimeError"]


def test_vllm_backend_without_vllm_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"sample\.backend: vllm"):
        vllm_generator("m", SampleConfig(backend="vllm"))


def _samples() -> list[dict]:
    rows = [{"query_id": f"q{i}", "query": f"a red fox number {i} in the snow",
             "sample_index": j, "prompt": f"A red fox {i}.{j} runs through fresh snow.",
             "status": "ok", "model": "m", "seed": 1} for i in range(4) for j in range(2)]
    rows.append({**rows[0], "sample_index": 2, "prompt": None, "status": "empty"})
    return rows


def test_text_feedback_critiques_refines_and_pairs(tmp_path: Path, judge: LLMConfig,
                                                   fake_llm) -> None:
    def responder(messages: list[dict]) -> str:
        if "Final Refined Prompt" in messages[-1]["content"] and "fox 3" in \
                messages[0]["content"]:
            return "Final Refined Prompt: [[start]] line one\nline two [[end]]"
        return default_responder(messages)

    fake_llm.fake.responder = responder
    out = run_shard(_samples(), 0, judge, tmp_path)
    crit = read_table(out["critiques"], "critiques")
    assert crit.height == 9                                    # nothing dropped
    assert crit.filter(pl.col("prompt").is_null())["critique_status"].to_list() == \
        ["skipped:sample-empty"]
    judged = crit.filter(pl.col("critique_status") == "ok")
    assert set(judged["judgement"]) == {"yes", "no"}           # the fake judge says both
    assert judged["render"].to_list() == (judged["judgement"] == "yes").to_list()
    no = judged.filter(pl.col("judgement") == "no")
    assert set(no["refine_status"]) <= {"ok", "multiline"}
    assert judged.filter(pl.col("judgement") == "yes")["refine_status"].to_list() == \
        ["skipped"] * int((judged["judgement"] == "yes").sum())
    pairs = read_table(out["text_pairs"], "text_pairs")
    assert pairs.height == int((no["refine_status"] == "ok").sum())
    assert pairs["rejected"].to_list() == no.filter(pl.col("refine_status") == "ok")[
        "prompt"].to_list()
    assert all("\n" not in c for c in pairs["chosen"])         # multi-line ones are skipped
    merged = merge([out], tmp_path / "merged")
    assert len(to_render(merged["critiques"])) == int(judged["render"].sum())
    assert merged["stats"]["text_pairs"] == pairs.height


def test_a_sample_failing_a_hard_check_is_a_no_without_a_judge_call(
        tmp_path: Path, judge: LLMConfig, fake_llm) -> None:
    """A looping sample and one naming a -neg term: no critique request reaches the
    server; both are refined as usual; none of them is rendered; the gate off renders
    every whole sample (the strict 'w/o TL FDBK' ablation)."""
    loop = {**_samples()[0], "query_id": "loop", "query": "a fox in snow",
            "prompt": "a fox in snow, a fox in snow, " * 12}
    neg = {**_samples()[0], "query_id": "neg", "query": "a city street at night -neg cars",
           "prompt": "A rainy city street at night, neon signs reflected in puddles, cars "
                     "passing slowly under the lights while the camera glides forward."}
    samples = [*_samples()[:2], loop, neg]
    out = run_shard(samples, 0, judge, tmp_path)
    crit = read_table(out["critiques"], "critiques")
    failed = crit.filter(~pl.col("checks_passed"))
    assert failed["query_id"].to_list() == ["loop", "neg"]
    assert failed["critique_status"].to_list() == ["check:repetition", "check:neg-violation"]
    assert failed["check_findings"].to_list()[0][0] == "repetition"
    assert (failed["judgement"] == "no").all() and not failed["render"].any()
    critiqued = [k for k in fake_llm.fake.requests if "Step-by-step verification" in k]
    assert len(critiqued) == 2                                 # only the two clean samples
    assert all("a fox in snow, a fox" not in k and "cars passing" not in k
               for k in critiqued)
    assert all(s in ("ok", "multiline") or s.startswith("check:")
               for s in failed["refine_status"])
    assert len(to_render(out["critiques"], gate=False)) == 4
    assert len(to_render(out["critiques"])) == int(crit["render"].sum())


def test_text_feedback_fails_loudly_when_the_judge_is_unreachable(tmp_path: Path,
                                                                  judge: LLMConfig) -> None:
    dead = judge.model_copy(update={"api_base": "http://127.0.0.1:9/v1", "max_retries": 0})
    with pytest.raises(TransientError, match=r"critique: all 8 calls failed .*Cannot "
                       r"connect to host 127\.0\.0\.1:9"):            # Prefect retries it
        run_shard(_samples(), 0, dead, tmp_path)
    assert not list(tmp_path.iterdir())                        # nothing half-written


def test_text_feedback_stops_at_a_permanent_error(tmp_path: Path, judge: LLMConfig,
                                                  fake_llm) -> None:
    fake_llm.fake.api_key = "sk-right"
    with pytest.raises(StageFailed, match=r"critique: all 8 calls failed .*Incorrect API key"):
        run_shard(_samples(), 0, judge, tmp_path, api_key="sk-wrong")
    assert not list(tmp_path.iterdir())
