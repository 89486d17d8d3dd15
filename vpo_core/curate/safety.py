"""Safety labels: which curated queries are safety queries, and where the label came from.

VidProM carries Detoxify scores; a query is unsafe when any chosen score reaches the
threshold. Keywords catch what the scores miss (and label inputs without scores); they
are matched on the text without flags, so ``-neg nude`` (a constraint) is not a request.
The label is a candidate: the judge LLM re-checks it later (recorded as source ``llm``).
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
    """Add ``safety``, ``safety_source`` and ``safety_detail`` (details are computed for
    the flagged rows only)."""
    cols = [c for c in cfg.detoxify_columns if c in df.columns]
    scores = [pl.col(c).fill_null(0.0) for c in cols]
    detox = (pl.max_horizontal(scores) >= cfg.detoxify_threshold) if cols else pl.lit(False)
    pattern = keyword_regex(bundled_keywords() if cfg.keywords is None else cfg.keywords)
    keyword = pl.col("text").str.contains(pattern) if pattern else pl.lit(False)
    df = df.with_row_index("_i").with_columns(detox.alias("_d"), keyword.alias("_k"))
    hits = df.filter(pl.col("_d") | pl.col("_k"))
    names = dict(enumerate(cols))
    detox_detail = pl.format(
        "{}={}", pl.concat_list(scores).list.arg_max().replace_strict(names,
                                                                      return_dtype=pl.String),
        pl.max_horizontal(scores).round(3)) if cols else pl.lit(None, pl.String)
    keyword_detail = pl.format("keyword: {}", pl.col("text").str.extract(pattern, 1)
                               .str.to_lowercase()) if pattern else pl.lit(None, pl.String)
    details = hits.select("_i", pl.concat_str(
        pl.when(pl.col("_d")).then(detox_detail), pl.when(pl.col("_k")).then(keyword_detail),
        separator="; ", ignore_nulls=True).alias("safety_detail"))
    return df.join(details, on="_i", how="left", maintain_order="left").with_columns(
        (pl.col("_d") | pl.col("_k")).alias("safety"),
        pl.when(pl.col("_d") & pl.col("_k")).then(pl.lit("detoxify+keyword"))
        .when(pl.col("_d")).then(pl.lit("detoxify"))
        .when(pl.col("_k")).then(pl.lit("keyword"))
        .otherwise(pl.lit("none")).alias("safety_source"),
        pl.lit(None, pl.String).alias("safety_check"),
    ).drop("_i", "_d", "_k")
