"""VPO's pair rules on hand-made rewards: margin, dominance, one pair per query, the merge
with text pairs, TRL's conversational format, and the summary's reasons."""

from pathlib import Path

import polars as pl
import pytest

from vpo_core.config import PairsConfig
from vpo_core.pairs.build import build_pairs, summary, video_pairs
from vpo_core.prompts.templates import optimizer_messages
from vpo_core.reward.checklist import visionreward_score, vpo_score
from vpo_core.tables import polars_schema, write_table

W4 = 1.141818673357406    # VPO weight of question 4: above the margin on its own
W5 = 0.03495652038170829  # question 5: far below it


def _answers(*yes: int) -> list[bool]:
    return [i + 1 in yes for i in range(64)]


def _reward(query_id: str, index: int, score: float | None = None,
            answers: list[bool] | None = None, status: str = "ok") -> dict:
    if answers is not None:
        score = vpo_score(answers)
    return {"query_id": query_id, "query": f"query {query_id}", "sample_index": index,
            "prompt": f" prompt {query_id}-{index} ", "video_path": f"/v/{query_id}-{index}.mp4",
            "backend": "checklist" if answers is not None else "frame-metrics",
            "score": score if status == "ok" else None,
            "visionreward_score": visionreward_score(answers) if answers else None,
            "answers": answers, "metrics": None, "status": status, "error": None}


def _rewards(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=polars_schema("rewards"))


def _text_pairs(*rows: tuple[str, int]) -> pl.DataFrame:
    return pl.DataFrame([{"query_id": q, "query": f"query {q}", "sample_index": i,
                          "chosen": f"refined {q}-{i}", "rejected": f"prompt {q}-{i}"}
                         for q, i in rows], schema=polars_schema("text_pairs"))


def _pairs_of(df: pl.DataFrame) -> list[tuple[str, str, str]]:
    return [(r["query_id"], r["chosen"][0]["content"], r["rejected"][0]["content"])
            for r in df.iter_rows(named=True)]


CFG = PairsConfig(margin=0.5)  # the paper's margin on the checklist score


def test_single_flip_above_margin_is_a_pair() -> None:
    rewards = _rewards(_reward("q", 0, answers=_answers(1)),
                       _reward("q", 1, answers=_answers(1, 4)))
    df = build_pairs(None, rewards, CFG)
    assert _pairs_of(df) == [("q", "prompt q-1", "prompt q-0")]
    assert df["chosen_score"][0] - df["rejected_score"][0] == pytest.approx(W4)


def test_equal_answers_are_not_a_pair() -> None:
    rewards = _rewards(_reward("q", 0, answers=_answers(1, 4)),
                       _reward("q", 1, answers=_answers(1, 4)))
    found = video_pairs(rewards, 0.0)                  # no margin at all: still no pair
    assert found.pairs == [] and found.no_pair == {"q": "gap-below-margin"}


def test_single_flip_below_margin_is_not_a_pair() -> None:
    rewards = _rewards(_reward("q", 0, answers=_answers(1)),
                       _reward("q", 1, answers=_answers(1, 5)))
    assert video_pairs(rewards, 0.5).no_pair == {"q": "gap-below-margin"}
    assert len(video_pairs(rewards, W5 / 2).pairs) == 1


def test_a_wide_gap_without_dominance_is_not_a_pair() -> None:
    # chosen gains question 4 but loses question 5: gap W4 - W5 > 0.5, not dominant
    rewards = _rewards(_reward("q", 0, answers=_answers(1, 5)),
                       _reward("q", 1, answers=_answers(1, 4)))
    found = video_pairs(rewards, 0.5)
    assert found.pairs == [] and found.no_pair == {"q": "not-dominant"}


@pytest.mark.parametrize(("rejected", "paired"), [
    (0.5, False),           # a gap of exactly the margin is not enough
    (0.5 - 1e-9, True),     # just above it is
])
def test_margin_is_strict(rejected: float, paired: bool) -> None:
    rewards = _rewards(_reward("q", 0, 1.0), _reward("q", 1, rejected))
    assert len(video_pairs(rewards, 0.5).pairs) == int(paired)
    assert build_pairs(None, rewards, CFG).height == int(paired)


def test_one_pair_per_query_takes_the_largest_gap_with_stable_ties() -> None:
    rewards = _rewards(_reward("q", 0, 0.0), _reward("q", 1, 2.0), _reward("q", 2, 2.0),
                       _reward("q", 3, 1.0))
    df = build_pairs(None, rewards, CFG)
    assert _pairs_of(df) == [("q", "prompt q-1", "prompt q-0")]      # tie 1>0, 2>0: lowest
    everything = build_pairs(None, rewards, CFG.model_copy(update={"one_per_query": False}))
    assert _pairs_of(everything) == [("q", "prompt q-1", "prompt q-0"),
                                     ("q", "prompt q-2", "prompt q-0"),
                                     ("q", "prompt q-1", "prompt q-3"),
                                     ("q", "prompt q-2", "prompt q-3"),
                                     ("q", "prompt q-3", "prompt q-0")]
    reversed_rows = rewards.reverse()
    assert build_pairs(None, reversed_rows, CFG).equals(df)


def test_only_ok_rows_are_paired_and_reasons() -> None:
    rewards = _rewards(
        _reward("a", 0, 3.0), _reward("a", 1, 0.0, status="error:unparseable"),
        _reward("b", 0, 3.0), _reward("b", 1, status="skipped:render-failed"),
        _reward("c", 0, status="skipped:render-failed"),
        _reward("d", 0, 1.0), _reward("d", 1, 0.8),
        _reward("e", 0, answers=_answers(1, 5)), _reward("e", 1, answers=_answers(1, 4)),
        _reward("f", 0, 0.0), _reward("f", 1, 1.0))
    assert video_pairs(rewards, 0.5).no_pair == {
        "a": "one-video", "b": "one-video", "c": "no-scored-video", "d": "gap-below-margin",
        "e": "not-dominant"}
    assert _pairs_of(build_pairs(None, rewards, CFG)) == [("f", "prompt f-1", "prompt f-0")]


def test_merge_text_first_and_dedupe_by_query() -> None:
    rewards = _rewards(_reward("a", 0, 0.0), _reward("a", 1, 1.0),
                       _reward("b", 0, 0.0), _reward("b", 1, 1.0))
    text = _text_pairs(("b", 3), ("b", 1), ("z", 0))
    df = build_pairs(text, rewards, CFG)
    assert df["source"].to_list() == ["text", "text", "video"]
    assert _pairs_of(df) == [("b", "refined b-1", "prompt b-1"), ("z", "refined z-0", "prompt z-0"),
                             ("a", "prompt a-1", "prompt a-0")]
    assert df["chosen_score"].to_list() == [None, None, 1.0]
    every = build_pairs(text, rewards, CFG.model_copy(update={"one_per_query": False}))
    assert every["source"].to_list() == ["text"] * 3 + ["video"] * 2
    video_only = build_pairs(text, rewards, CFG.model_copy(update={"text_feedback": False}))
    assert video_only["source"].to_list() == ["video", "video"]
    assert video_only["query_id"].to_list() == ["a", "b"]


def test_trl_conversational_format(tmp_path: Path) -> None:
    from datasets import load_dataset

    rewards = _rewards(_reward("a", 0, 0.0), _reward("a", 1, 1.0))
    df = build_pairs(_text_pairs(("b", 0)), rewards, CFG)
    path = tmp_path / "dpo_pairs.parquet"
    write_table(df, path, "dpo_pairs")
    ds = load_dataset("parquet", data_files=str(path), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert ds[1]["prompt"] == optimizer_messages("query a")
    assert ds[1]["chosen"] == [{"role": "assistant", "content": "prompt a-1"}]
    assert ds[1]["rejected"] == [{"role": "assistant", "content": "prompt a-0"}]
    assert ds[0]["source"] == "text" and ds[0]["chosen"][0]["content"] == "refined b-0"


def test_summary() -> None:
    rewards = _rewards(_reward("a", 0, 0.0), _reward("a", 1, 2.0),
                       _reward("b", 0, 0.0), _reward("b", 1, 1.0),
                       _reward("c", 0, 1.0), _reward("c", 1, 0.9),
                       _reward("d", 0, 1.0),
                       _reward("e", 0, status="skipped:render-failed"))
    text = _text_pairs(("b", 0), ("c", 1))
    df = build_pairs(text, rewards, CFG)
    s = summary(text, rewards, df, CFG)
    assert s["pairs"] == 3 and s["by_source"] == {"text": 2, "video": 1}
    assert s["queries"] == 5 and s["queries_with_pair"] == 3
    assert s["valid_video_pairs"] == 2 and s["video_pairs_replaced_by_text"] == 1
    assert s["score_gap"] == {"min": 2.0, "mean": 2.0, "median": 2.0, "max": 2.0}
    assert s["queries_without_pair"] == {"d": "one-video", "e": "no-scored-video"}
    assert s["without_pair"] == {"one-video": 1, "no-scored-video": 1}
    ablation = CFG.model_copy(update={"text_feedback": False})
    s = summary(text, rewards, build_pairs(text, rewards, ablation), ablation)
    assert s["by_source"] == {"video": 2} and s["video_pairs_replaced_by_text"] == 0
    assert s["queries_without_pair"]["c"] == "gap-below-margin"
    empty = summary(None, rewards.clear(), build_pairs(None, rewards.clear(), CFG), CFG)
    assert empty["pairs"] == 0 and empty["score_gap"] is None


@pytest.mark.usefixtures("prefect_server")
def test_pairs_flow_without_any_pair_fails_with_reasons_and_keeps_the_table(
        tmp_path: Path) -> None:
    """DPO cannot train on nothing: the flow says why there is no pair, before train-dpo."""
    from flows.pairs import pairs_flow
    from vpo_core.config import PipelineConfig
    from vpo_core.errors import StageFailed

    rewards = write_table(_rewards(_reward("q", 0, 0.5), _reward("q", 1, 0.52)),
                          tmp_path / "rewards.parquet", "rewards")
    critiques = write_table(pl.DataFrame(schema=polars_schema("critiques")),
                            tmp_path / "critiques.parquet", "critiques")
    cfg = PipelineConfig(work_dir=tmp_path / "work", pairs=PairsConfig(margin=0.05))
    with pytest.raises(StageFailed, match=r"no DPO pair from 1 queries .*gap") as err:
        pairs_flow(cfg, critiques=critiques, rewards=rewards)
    kept = list((tmp_path / "work").rglob("dpo_pairs.parquet"))
    assert len(kept) == 1 and str(kept[0]) in str(err.value)


def _official_first_valid(rows: list[dict], margin: float) -> tuple[int, int] | None:
    """process_dpo_data's loop (thu-coai/VPO src/process_data.py), on scores alone: for i,
    for j in sample order, the first i != j with score_i - score_j > margin."""
    for i in rows:
        for j in rows:
            if i is not j and i["score"] - j["score"] > margin:
                return i["sample_index"], j["sample_index"]
    return None


def test_first_valid_rule_is_the_official_loop() -> None:
    import random

    rule = CFG.model_copy(update={"video_pair_rule": "first-valid"})
    rewards = _rewards(_reward("q", 0, 1.0), _reward("q", 1, 0.0), _reward("q", 2, 3.0))
    assert _pairs_of(build_pairs(None, rewards, rule)) == [("q", "prompt q-0", "prompt q-1")]
    assert _pairs_of(build_pairs(None, rewards, CFG)) == [("q", "prompt q-2", "prompt q-1")]
    rng = random.Random(7)
    for trial in range(200):
        rows = [_reward("q", i, round(rng.uniform(0, 3), 1)) for i in range(4)]
        expected = _official_first_valid(rows, 0.5)
        got = build_pairs(None, _rewards(*rows), rule)
        pairs = [(int(c.split("-")[1]), int(r.split("-")[1])) for _, c, r in _pairs_of(got)]
        assert pairs == ([expected] if expected else []), (trial, rows)


def _candidates(*rows: tuple[str, int, str]) -> pl.DataFrame:
    """Candidate text pairs as text_candidates() gives them: (query, sample, status)."""
    return pl.DataFrame([{"query_id": q, "query": f"query {q}", "sample_index": i,
                          "chosen": f"refined {q}-{i}", "rejected": f"prompt {q}-{i}",
                          "status": st} for q, i, st in rows])


def test_official_text_pair_rule_chooses_before_it_drops() -> None:
    """process_data.py: one refinement per query (at random), then multi-line ones are
    dropped, so a query whose drawn refinement spans lines has no text pair even when
    another of its refinements is fine; valid-first takes that other one."""
    official = CFG.model_copy(update={"text_pair_rule": "official"})
    drawn = {}
    for seed in range(40):
        cands = _candidates(("q", 0, "multiline"), ("q", 1, "ok"), ("q", 2, "check:debris"))
        pairs = build_pairs(cands, _rewards(), official, seed=seed)
        drawn[seed] = _pairs_of(pairs)
        again = build_pairs(cands, _rewards(), official, seed=seed)
        assert _pairs_of(again) == drawn[seed]                  # seeded: reproducible
    kept = [p for p in drawn.values() if p]
    assert kept and len(kept) < len(drawn)                     # sometimes none, by draw
    assert all(p == [("q", "refined q-1", "prompt q-1")] for p in kept)
    first = build_pairs(_candidates(("q", 0, "multiline"), ("q", 1, "ok")), _rewards(), CFG)
    assert _pairs_of(first) == [("q", "refined q-1", "prompt q-1")]


def test_the_chosen_side_passes_the_hard_checks() -> None:
    from vpo_core.config import ChecksConfig

    loop = "a fox, a fox, a fox, a fox, a fox, a fox, a fox, a fox, a fox, a fox, a fox"
    good = ("A red fox trots across a snowy meadow at dawn, soft golden light, slow "
            "tracking camera, breath clouds in the cold air.")
    rewards = _rewards({**_reward("q", 0, 2.0), "prompt": loop},
                       {**_reward("q", 1, 1.0), "prompt": good},
                       {**_reward("q", 2, 0.0), "prompt": good + " Calm mood."})
    pairs = build_pairs(None, rewards, CFG, ChecksConfig())
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"])
            for r in pairs.iter_rows(named=True)] == [(good, good + " Calm mood.")]
    assert build_pairs(None, rewards, CFG)["chosen"][0][0]["content"] == loop   # unchecked
    stats = summary(None, rewards, pairs, CFG, ChecksConfig())
    assert stats["video_pairs_dropped_by_checks"] == 2          # 0>1 and 0>2


def test_official_rule_removes_refinements_without_both_markers_before_the_draw() -> None:
    """process_data.py keeps a refinement only when its answer holds both '[[start]]' and
    '[[end]]', then draws one per query: a cut-off refinement never takes a query's draw."""
    official = CFG.model_copy(update={"text_pair_rule": "official"})
    cut = _candidates(("q", 0, "cut-off")).with_columns(
        refinement=pl.lit("Final Refined Prompt: [[start]] refined q-0, cut at the budget"))
    whole = _candidates(("q", 1, "ok")).with_columns(
        refinement=pl.lit("Final Refined Prompt: [[start]] refined q-1 [[end]]"))
    cands = pl.concat([cut, whole])
    for seed in range(20):
        assert _pairs_of(build_pairs(cands, _rewards(), official, seed=seed)) == \
            [("q", "refined q-1", "prompt q-1")], seed
    kept = [seed for seed in range(20)
            if _pairs_of(build_pairs(cands.drop("refinement"), _rewards(), official, seed=seed))]
    assert 0 < len(kept) < 20            # without the filter the cut-off one is drawn at times


def test_text_candidates_carry_the_refinement_answer() -> None:
    from vpo_core.pairs.build import text_candidates

    critiques = pl.DataFrame({"query_id": ["q", "q"], "query": ["a q", "a q"],
                              "sample_index": [0, 1], "prompt": ["p0", "p1"],
                              "refinement": ["[[start]] r0 [[end]]", "[[start]] r1"],
                              "refined": ["r0", "r1"], "refine_status": ["ok", "cut-off"]})
    cands = text_candidates(critiques)
    assert cands["refinement"].to_list() == ["[[start]] r0 [[end]]", "[[start]] r1"]
    assert cands["status"].to_list() == ["ok", "cut-off"]
