"""Rule-based quality filter: one small rule per reason code, applied in order.

Each rule gives a polars expression that is True for the rows it rejects, and one that
says why in numbers (the ``detail`` column of ``rejects``, computed for rejected rows
only). The first rule a row fails is its reason; the stage summary counts them.

Rules read precomputed columns, so 1.67M queries are judged in a few vectorised passes:
``query`` and ``q_chars`` (the normalised query with its flags), ``text`` and its
character counts ``t_chars``, ``t_nonspace``, ``t_letters``, ``t_special``,
``t_non_latin`` (see :mod:`vpo_core.curate.textstats`), ``n_words``; the rules marked
``needs_tokens`` also read ``tok_count``, ``tok_unique`` and ``tok_repeat`` (the longest
run of one word repeated).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import polars as pl

from vpo_core.config import FilterConfig

# Reasons given before the rules run (ingestion) and after them (deduplication).
READ_REASONS = {
    "null_prompt": "the prompt is null or missing",
    "not_a_string": "the prompt is not text (a number, list or object)",
    "invalid_utf8": "the prompt's bytes are not valid UTF-8",
    "invalid_json": "the JSONL line is not valid JSON",
}
DEDUP_REASONS = {
    "duplicate": "same normalised query (ignoring case) as an earlier kept one",
    "near_duplicate": "BLEU against an earlier kept query above the threshold",
}

_URL = r"(?i)(?:https?://|www\.|discord\.gg/)\S+"
_CHAR_RUN = "(?i)(?:" + "|".join(f"{re.escape(c)}{{8,}}" for c in
                                 "abcdefghijklmnopqrstuvwxyz0123456789!?.*#=_~") + ")"


def _share(num: str, den: str) -> pl.Expr:
    return pl.col(num).cast(pl.Float64) / pl.col(den).clip(1).cast(pl.Float64)


def keyword_regex(words: list[str]) -> str | None:
    """Case-insensitive whole-word alternation (ASCII word boundaries, which keep the
    regex a fast DFA); None for an empty list."""
    words = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    if not words:
        return None
    return r"(?i)(?-u:\b)(" + "|".join(re.escape(w) for w in words) + r")(?-u:\b)"


@dataclass(frozen=True)
class Rule(ABC):
    """A reason code, what it means, and how to find its rows."""

    reason: str
    description: str
    needs_tokens: bool = False

    @abstractmethod
    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        """True for the rows this rule rejects."""

    @abstractmethod
    def detail(self, cfg: FilterConfig) -> pl.Expr:
        """Why, in numbers, for a rejected row."""


class Empty(Rule):
    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        return pl.col("t_chars") == 0

    def detail(self, cfg: FilterConfig) -> pl.Expr:
        return pl.lit("nothing left after normalisation")


class TooLong(Rule):
    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        return pl.col("q_chars") > cfg.max_chars

    def detail(self, cfg: FilterConfig) -> pl.Expr:
        return pl.format("{} chars > {}", pl.col("q_chars"), pl.lit(cfg.max_chars))


class TooShort(Rule):
    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        return pl.col("t_chars") < cfg.min_chars

    def detail(self, cfg: FilterConfig) -> pl.Expr:
        return pl.format("{} chars < {}", pl.col("t_chars"), pl.lit(cfg.min_chars))


class TooFewWords(Rule):
    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        return pl.col("n_words") < cfg.min_words

    def detail(self, cfg: FilterConfig) -> pl.Expr:
        return pl.format("{} words < {}", pl.col("n_words"), pl.lit(cfg.min_words))


class TooManyWords(Rule):
    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        return pl.col("n_words") > cfg.max_words

    def detail(self, cfg: FilterConfig) -> pl.Expr:
        return pl.format("{} words > {}", pl.col("n_words"), pl.lit(cfg.max_words))


class Url(Rule):
    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        return pl.col("query").str.contains(_URL)

    def detail(self, cfg: FilterConfig) -> pl.Expr:
        return pl.col("query").str.extract(f"({_URL})", 1).str.slice(0, 80)


class SpecialChars(Rule):
    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        return _share("t_special", "t_nonspace") > cfg.max_special_ratio

    def detail(self, cfg: FilterConfig) -> pl.Expr:
        return pl.format("{} special > {}", _share("t_special", "t_nonspace").round(2),
                         pl.lit(cfg.max_special_ratio))


class FewLetters(Rule):
    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        return _share("t_letters", "t_nonspace") < cfg.min_letter_ratio

    def detail(self, cfg: FilterConfig) -> pl.Expr:
        return pl.format("{} letters < {}", _share("t_letters", "t_nonspace").round(2),
                         pl.lit(cfg.min_letter_ratio))


class NonEnglish(Rule):
    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        return _share("t_non_latin", "t_letters") > cfg.max_non_latin_ratio

    def detail(self, cfg: FilterConfig) -> pl.Expr:
        return pl.format("{} non-Latin letters > {}", _share("t_non_latin", "t_letters").round(2),
                         pl.lit(cfg.max_non_latin_ratio))


class Spam(Rule):
    """Long runs of one character, one word four times in a row, or under 30% distinct
    words in a query of eight words or more."""

    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        repetitive = (pl.col("tok_count") >= 8) & (_share("tok_unique", "tok_count") < 0.3)
        return (pl.col("tok_repeat") >= 4) | repetitive | pl.col("query").str.contains(_CHAR_RUN)

    def detail(self, cfg: FilterConfig) -> pl.Expr:
        return pl.format("{} distinct of {} words, a word {} times in a row",
                         pl.col("tok_unique"), pl.col("tok_count"), pl.col("tok_repeat"))


class Keyword(Rule):
    def rejects(self, cfg: FilterConfig) -> pl.Expr:
        pattern = keyword_regex(cfg.blocked_keywords)
        return pl.col("query").str.contains(pattern) if pattern else pl.lit(False)

    def detail(self, cfg: FilterConfig) -> pl.Expr:
        pattern = keyword_regex(cfg.blocked_keywords) or "(.)"
        return pl.format("keyword: {}", pl.col("query").str.extract(pattern, 1).str.to_lowercase())


RULES: list[Rule] = [
    Empty("empty", "nothing left after normalisation"),
    TooLong("too_long", "more characters than max_chars (e.g. pasted documents)"),
    TooShort("too_short", "fewer characters than min_chars"),
    TooFewWords("too_few_words", "fewer words than min_words"),
    TooManyWords("too_many_words", "more words than max_words"),
    Url("url", "contains a URL"),
    SpecialChars("special_chars", "too many characters that are not letters, digits or "
                 "punctuation (emoji, symbols, markup)"),
    FewLetters("few_letters", "mostly digits or symbols"),
    NonEnglish("non_english", "mostly non-Latin script"),
    Spam("spam", "repetitive words or long runs of one character", needs_tokens=True),
    Keyword("keyword", "contains a blocked keyword", needs_tokens=True),
]

REASONS: dict[str, str] = {**READ_REASONS, **{r.reason: r.description for r in RULES},
                           **DEDUP_REASONS}


def apply_rules(df: pl.DataFrame, cfg: FilterConfig, needs_tokens: bool
                ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``df`` into (kept, rejected) by the rules of one phase (without or with
    tokens); rejected rows get ``reason`` (first rule failed) and ``detail``."""
    rules = [r for r in RULES if r.needs_tokens == needs_tokens]
    if not rules:
        return df, df.head(0).with_columns(reason=pl.lit(None, pl.String),
                                           detail=pl.lit(None, pl.String))
    reason = pl.coalesce([pl.when(r.rejects(cfg)).then(pl.lit(r.reason)) for r in rules])
    df = df.with_columns(reason.alias("reason"))
    rejected = df.filter(pl.col("reason").is_not_null())
    detail = pl.coalesce([pl.when(pl.col("reason") == r.reason).then(r.detail(cfg))
                          for r in rules])
    return (df.filter(pl.col("reason").is_null()).drop("reason"),
            rejected.with_columns(detail.cast(pl.String).alias("detail")))
