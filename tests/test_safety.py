"""Safety labels from Detoxify scores and keywords, with their source."""

import polars as pl

from vpo_core.config import SafetyConfig
from vpo_core.curate.safety import bundled_keywords, label_safety


def _frame(texts: list[str], toxicity: list[float] | None = None) -> pl.DataFrame:
    df = pl.DataFrame({"text": texts})
    if toxicity is not None:
        df = df.with_columns(pl.Series("toxicity", toxicity),
                             pl.Series("sexual_explicit", [0.0] * len(texts)))
    return df


def test_sources_and_details() -> None:
    df = label_safety(_frame(["a quiet lake", "a bloody battle", "a quiet lake at night",
                              "blood on the floor"], [0.1, 0.2, 0.93, 0.8]), SafetyConfig())
    assert df["safety"].to_list() == [False, True, True, True]
    assert df["safety_source"].to_list() == ["none", "keyword", "detoxify", "detoxify+keyword"]
    assert df["safety_detail"].to_list() == [None, "keyword: bloody", "toxicity=0.93",
                                             "toxicity=0.8; keyword: blood"]


def test_keywords_are_whole_words() -> None:
    # "bloodhound" is not "blood"; case does not matter
    df = label_safety(_frame(["a bloodhound in the park", "NUDE beach painting"]),
                      SafetyConfig())
    assert df["safety"].to_list() == [False, True]


def test_threshold_columns_and_keywords_are_configurable() -> None:
    frame = _frame(["a bloody battle", "calm sea"], [0.2, 0.6])
    assert label_safety(frame, SafetyConfig(keywords=[]))["safety"].to_list() == [False, True]
    strict = SafetyConfig(detoxify_threshold=0.1, detoxify_columns=["sexual_explicit"],
                          keywords=["calm"])
    assert label_safety(frame, strict)["safety_source"].to_list() == ["none", "keyword"]


def test_bundled_keywords() -> None:
    words = bundled_keywords()
    assert "nude" in words and "dead body" in words and not any(w.startswith("#") for w in words)
