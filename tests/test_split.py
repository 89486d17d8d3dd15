"""Splits: deterministic for a seed, disjoint, sized, with the safety share."""

import polars as pl
import pytest

from vpo_core.config import SplitConfig
from vpo_core.curate.dedup import query_ids
from vpo_core.curate.split import assign_splits


def _pool(n: int, unsafe_every: int = 5) -> pl.DataFrame:
    ids = query_ids(pl.Series([f"query number {i}" for i in range(n)]))
    return pl.DataFrame({"query_id": ids, "safety": [i % unsafe_every == 0 for i in range(n)]})


def _splits(df: pl.DataFrame) -> dict[str, set[str]]:
    return {s: set(df.filter(pl.col("split") == s)["query_id"]) for s in ("sft", "dpo", "eval")}


def test_sizes_safety_share_and_no_overlap() -> None:
    df, report = assign_splits(_pool(1000), SplitConfig(sft=200, dpo=100, eval=50), seed=0)
    sets = _splits(df)
    assert {k: len(v) for k, v in sets.items()} == {"sft": 200, "dpo": 100, "eval": 50}
    assert not (sets["sft"] & sets["dpo"] or sets["sft"] & sets["eval"]
                or sets["dpo"] & sets["eval"])
    assert report["sft"] == {"requested": 200, "safety": 20, "general": 180,
                             "requested_safety": 20}
    safety = df.filter(pl.col("split") == "dpo")["safety"].sum()
    assert safety == 10
    assert (df["split"] == "unused").sum() == 650


def test_deterministic_and_independent_of_input_order() -> None:
    pool = _pool(500)
    cfg = SplitConfig(sft=100, dpo=50, eval=20)
    a, _ = assign_splits(pool, cfg, seed=1)
    b, _ = assign_splits(pool.reverse(), cfg, seed=1)
    c, _ = assign_splits(pool, cfg, seed=2)
    assert _splits(a) == _splits(b)
    assert _splits(a) != _splits(c)


def test_eval_is_stable_when_training_splits_grow() -> None:
    pool = _pool(800)
    small, _ = assign_splits(pool, SplitConfig(sft=50, dpo=50, eval=30), seed=0)
    large, _ = assign_splits(pool, SplitConfig(sft=300, dpo=200, eval=30), seed=0)
    assert _splits(small)["eval"] == _splits(large)["eval"]
    assert _splits(small)["sft"] <= _splits(large)["sft"]


@pytest.mark.parametrize("unsafe_every", [1000, 1])
def test_short_pool_is_topped_up_from_the_other(unsafe_every: int) -> None:
    _, report = assign_splits(_pool(200, unsafe_every), SplitConfig(sft=100, dpo=0, eval=0,
                                                                  safety_share=0.5), seed=0)
    assert report["sft"]["safety"] + report["sft"]["general"] == 100


def test_pool_smaller_than_requested() -> None:
    df, report = assign_splits(_pool(30), SplitConfig(sft=20, dpo=20, eval=5), seed=0)
    assert [report[s]["safety"] + report[s]["general"] for s in ("eval", "sft", "dpo")] == \
        [5, 20, 5]
    assert (df["split"] == "unused").sum() == 0
