"""Safety labels: which curated queries are safety queries, and where the label came from.

VidProM carries Detoxify scores; a query is unsafe when any chosen score reaches the
threshold. Keywords catch what the scores miss (and label inputs without scores). The
label is a candidate: the judge LLM re-checks it later (recorded as source ``llm``).
"""

from __future__ import annotations

from importlib import resources

import polars as pl

from vpo_core.config import SafetyConfig
from vpo_core.curate.filters import keyword_regex


def bundled_keywords() -> list[str]:
    """The shipped keyword list (vpo_core/data/safety_keywords.txt)."""
    text = (resources.files("vpo_core") / "data" / "safety_keywords.txt").read_text("utf-8")
    return [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]


def label_safety(df: pl.DataFrame, cfg: SafetyConfig) -> pl.DataFrame:
    """Add ``safety``, ``safety_source`` and ``safety_detail``."""
    cols = [c for c in cfg.detoxify_columns if c in df.columns]
    if cols:
        scores = pl.concat_list([pl.col(c).fill_null(0.0) for c in cols])
        worst = scores.list.arg_max()
        top = scores.list.max()
        detox_hit = top >= cfg.detoxify_threshold
        detox_detail = pl.format("{}={}", worst.replace_strict(dict(enumerate(cols)),
                                                               return_dtype=pl.String),
                                 top.round(3))
    else:
        detox_hit, detox_detail = pl.lit(False), pl.lit(None, pl.String)
    pattern = keyword_regex(bundled_keywords() if cfg.keywords is None else cfg.keywords)
    if pattern:
        kw_hit = pl.col("text").str.contains(pattern)
        kw_detail = pl.format("keyword: {}", pl.col("text").str.extract(pattern, 1)
                              .str.to_lowercase())
    else:
        kw_hit, kw_detail = pl.lit(False), pl.lit(None, pl.String)
    return df.with_columns(detox_hit.alias("_d"), kw_hit.alias("_k")).with_columns(
        (pl.col("_d") | pl.col("_k")).alias("safety"),
        pl.when(pl.col("_d") & pl.col("_k")).then(pl.lit("detoxify+keyword"))
        .when(pl.col("_d")).then(pl.lit("detoxify"))
        .when(pl.col("_k")).then(pl.lit("keyword"))
        .otherwise(pl.lit("none")).alias("safety_source"),
        pl.concat_str(pl.when(pl.col("_d")).then(detox_detail),
                      pl.when(pl.col("_k")).then(kw_detail),
                      separator="; ", ignore_nulls=True).replace("", None)
        .alias("safety_detail"),
    ).drop("_d", "_k")
