"""Every rule's reason code, through the clean step (ingest -> clean) of vpo_core."""

import json
from pathlib import Path

import polars as pl
import pytest

from vpo_core.config import FilterConfig, NearDuplicateConfig
from vpo_core.curate import stage
from vpo_core.curate.filters import REASONS, RULES
from vpo_core.tables import read_table

GOOD = "a red fox runs through fresh snow at dawn, cinematic"

CASES = {
    "empty": "-ar 16:9",                                     # nothing left without the flag
    "too_long": "a long story " * 200,
    "too_short": "a cat",
    "too_few_words": "Supercalifragilistic",
    "too_many_words": " ".join(["word"] * 150 + ["other"] * 60),
    "url": "see https://example.com/video for the cat",
    "special_chars": "🔥🔥🔥 fire ★★★ ♥♥♥ ✨✨✨",
    "few_letters": "2024 12 31 23 59 58 1 2 3 4",
    "non_english": "человек бежит по пустыне в шторм",
    "spam": "cat cat cat cat in the garden today",
    "keyword": "lorem ipsum dolor sit amet video",
}


def _clean(tmp_path: Path, queries: list, **filters) -> tuple[pl.DataFrame, pl.DataFrame]:
    src = tmp_path / "q.json"
    src.write_text(json.dumps(queries))
    raw = stage.ingest(src, "prompt", tmp_path)["raw"]
    out = stage.clean(raw, FilterConfig(**filters), NearDuplicateConfig(), tmp_path)
    return read_table(out["candidates"]), read_table(out["rejects"])


def test_each_rule_rejects_with_its_reason(tmp_path: Path) -> None:
    kept, rejects = _clean(tmp_path, [GOOD, *CASES.values()])
    assert kept["original"].to_list() == [GOOD]
    got = dict(zip(rejects["original"], rejects["reason"], strict=True))
    assert got == {q: reason for reason, q in CASES.items()}
    assert rejects["detail"].null_count() == 0                   # every reject says why


def test_every_rule_is_documented() -> None:
    assert {r.reason for r in RULES} <= set(REASONS)
    assert all(REASONS[r.reason] for r in RULES)


@pytest.mark.parametrize(("query", "detail"), [
    ("a cat", "5 chars < 8"),
    ("see https://example.com/video for the cat", "https://example.com/video"),
    ("lorem ipsum dolor sit amet video", "keyword: lorem ipsum"),
])
def test_details_give_the_numbers(tmp_path: Path, query: str, detail: str) -> None:
    _, rejects = _clean(tmp_path, [query])
    assert rejects["detail"].to_list() == [detail]


def test_thresholds_are_configurable(tmp_path: Path) -> None:
    kept, rejects = _clean(tmp_path, ["a cat", "human eye close up"], min_chars=3,
                           min_words=4)
    assert rejects.select("original", "reason").rows() == [("a cat", "too_few_words")]
    assert kept["original"].to_list() == ["human eye close up"]


def test_bad_rows_are_rejected_not_dropped(tmp_path: Path) -> None:
    queries = [GOOD, None, 42, {"x": 1}, "", "x" * 100_000]
    kept, rejects = _clean(tmp_path, queries)
    assert kept.height + rejects.height == len(queries)
    assert dict(zip(rejects["source_row"], rejects["reason"], strict=True)) == {
        1: "null_prompt", 2: "not_a_string", 3: "not_a_string", 4: "empty", 5: "too_long"}
