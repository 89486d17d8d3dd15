"""The pairs stage's library: VPO's preference pairs from text and video feedback (§3.2),
written after the rules of the official ``process_data.py``.

Video pairs, per query, among the videos scored ``ok``: (chosen, rejected) with a score gap
strictly above ``margin`` and, when both carry checklist answers, chosen at least as good
on every question (no yes → no) and better on at least one. By default one pair per query:
``video_pair_rule: first-valid`` keeps the first valid pair in sample order, as the
official code does (the ``paper`` preset); ``largest-gap`` the widest gap (ties: lowest
chosen, then rejected, sample index). ``one_per_query=False`` keeps every valid pair.
Text pairs (refined ≻ original, from the text-feedback stage's ``critiques``) come first;
with ``one_per_query`` each query keeps one pair and a text pair wins over a video pair
(official: deduplicated by prompt, text first). ``text_pair_rule: official`` first removes the
refinements whose answer lacks either marker (``[[start]]``, ``[[end]]``, exactly as
written: a cut-off answer never enters the draw), then picks one per query at random
(seeded) and only then drops it if it spans several lines or failed a hard check, as
``process_data.py`` does;
``valid-first`` takes the first valid one. ``text_feedback=False`` keeps video pairs only
(the paper's "w/o TL FDBK" ablation).

The chosen side of every pair passes the hard principle checks (:mod:`vpo_core.checks`);
pairs whose chosen prompt fails one are dropped and counted.

Output rows are in TRL's conversational format: ``prompt`` is the optimizer's own message
for the query, ``chosen``/``rejected`` one assistant message each.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from statistics import mean, median
from typing import Any

import polars as pl

from vpo_core.checks import check_prompt
from vpo_core.config import ChecksConfig, PairsConfig
from vpo_core.prompts.parsing import OFFICIAL_END, OFFICIAL_START
from vpo_core.prompts.templates import optimizer_messages
from vpo_core.reward.checklist import dominates
from vpo_core.tables import polars_schema

# Why a query has no video pair, from the least to the most progress.
NO_SCORED_VIDEO = "no-scored-video"
ONE_VIDEO = "one-video"
GAP_BELOW_MARGIN = "gap-below-margin"
NOT_DOMINANT = "not-dominant"


@dataclass(frozen=True)
class VideoPair:
    """A valid video pair of one query (sample indices and VPO scores)."""

    query_id: str
    query: str
    chosen: int
    rejected: int
    chosen_prompt: str
    rejected_prompt: str
    chosen_score: float
    rejected_score: float

    @property
    def gap(self) -> float:
        return self.chosen_score - self.rejected_score


@dataclass(frozen=True)
class VideoPairs:
    """Every valid video pair, and why each query without one has none."""

    pairs: list[VideoPair]
    no_pair: dict[str, str]


def _query_pairs(rows: list[dict[str, Any]], margin: float) -> tuple[list[VideoPair], str]:
    """Valid pairs of one query's scored videos, or the reason there are none."""
    if len(rows) < 2:
        return [], ONE_VIDEO if rows else NO_SCORED_VIDEO
    pairs, wide = [], False
    for a in rows:
        for b in rows:
            if a is b or not a["score"] - b["score"] > margin:
                continue
            wide = True
            if (a["answers"] is not None and b["answers"] is not None
                    and not dominates(a["answers"], b["answers"])):
                continue
            pairs.append(VideoPair(a["query_id"], a["query"], a["sample_index"],
                                   b["sample_index"], a["prompt"], b["prompt"],
                                   a["score"], b["score"]))
    return pairs, "" if pairs else (NOT_DOMINANT if wide else GAP_BELOW_MARGIN)


def video_pairs(rewards: pl.DataFrame, margin: float) -> VideoPairs:
    """All valid video pairs of a ``rewards`` table, and the reason for each query that
    has none (``no-scored-video``, ``one-video``, ``gap-below-margin``, ``not-dominant``)."""
    pairs: list[VideoPair] = []
    no_pair: dict[str, str] = {}
    ok = pl.col("status") == "ok"
    scored = rewards.filter(ok & pl.col("score").is_not_null()).sort("query_id",
                                                                       "sample_index")
    by_query = {k[0]: g.to_dicts() for k, g in scored.group_by("query_id", maintain_order=True)}
    for query_id in sorted(set(rewards.get_column("query_id").to_list())):
        found, why = _query_pairs(by_query.get(query_id, []), margin)
        pairs.extend(found)
        if not found:
            no_pair[query_id] = why
    return VideoPairs(pairs, no_pair)


def _best(pairs: list[VideoPair], rule: str) -> list[VideoPair]:
    """One pair per query: the first valid one in sample order (chosen, then rejected
    index: the official loop), or the largest gap (ties: lowest sample indices)."""
    order = ((lambda p: (p.query_id, p.chosen, p.rejected)) if rule == "first-valid"
             else (lambda p: (p.query_id, -p.gap, p.chosen, p.rejected)))
    best: dict[str, VideoPair] = {}
    for p in sorted(pairs, key=order):
        best.setdefault(p.query_id, p)
    return list(best.values())


def _row(query_id: str, query: str, chosen: str, rejected: str, source: str,
         chosen_score: float | None = None, rejected_score: float | None = None
         ) -> dict[str, Any]:
    return {"prompt": optimizer_messages(query),
            "chosen": [{"role": "assistant", "content": chosen.strip()}],
            "rejected": [{"role": "assistant", "content": rejected.strip()}],
            "query_id": query_id, "query": query, "source": source,
            "chosen_score": chosen_score, "rejected_score": rejected_score}


def text_candidates(critiques: pl.DataFrame) -> pl.DataFrame:
    """Every refinement that parsed, as a candidate text pair with its status (``ok``,
    ``multiline``, ``check:<codes>``, ``cut-off``) and the refinement answer it came from."""
    return (critiques.filter(pl.col("refined").is_not_null())
            .select("query_id", "query", "sample_index", "refinement", chosen="refined",
                    rejected="prompt", status="refine_status"))


def has_both_markers(answer: pl.Expr) -> pl.Expr:
    """The official filter before the draw: ``answer.count('[[start]]') and
    answer.count('[[end]]')``."""
    return (answer.str.contains(OFFICIAL_START, literal=True)
            & answer.str.contains(OFFICIAL_END, literal=True)).fill_null(False)


def choose_text_pairs(text: pl.DataFrame, cfg: PairsConfig, seed: int) -> pl.DataFrame:
    """The text pairs, one per query unless ``one_per_query`` is off (see the module)."""
    if "status" not in text.columns:
        text = text.with_columns(status=pl.lit("ok"))
    if cfg.text_pair_rule == "official" and cfg.one_per_query:
        if "refinement" in text.columns:
            text = text.filter(has_both_markers(pl.col("refinement")))
        drawn = text.with_columns(draw=pl.Series([
            hashlib.sha256(f"{seed}:{q}:{i}".encode()).hexdigest()
            for q, i in text.select("query_id", "sample_index").iter_rows()],
            dtype=pl.String))
        chosen = drawn.sort("query_id", "draw").unique("query_id", keep="first",
                                                       maintain_order=True).drop("draw")
        return chosen.filter(pl.col("status") == "ok")
    valid = text.filter(pl.col("status") == "ok").sort("query_id", "sample_index")
    return valid.unique("query_id", keep="first", maintain_order=True) \
        if cfg.one_per_query else valid


def _passes(query: str, prompt: str, checks: ChecksConfig | None) -> bool:
    return checks is None or check_prompt(query, prompt, checks).passed


def build_pairs(text_pairs: pl.DataFrame | None, rewards: pl.DataFrame, cfg: PairsConfig,
                checks: ChecksConfig | None = None, seed: int = 0) -> pl.DataFrame:
    """The DPO pairs (conforming to ``dpo_pairs``): text pairs first, then video pairs.
    ``text_pairs``: candidates (:func:`text_candidates`) or valid pairs (no status)."""
    rows: list[dict[str, Any]] = []
    texted: set[str] = set()
    if cfg.text_feedback and text_pairs is not None:
        text = choose_text_pairs(text_pairs, cfg, seed)
        for t in text.iter_rows(named=True):
            if not _passes(t["query"], t["chosen"], checks):
                continue
            rows.append(_row(t["query_id"], t["query"], t["chosen"], t["rejected"], "text"))
            texted.add(t["query_id"])
    found = [p for p in video_pairs(rewards, cfg.margin).pairs
             if _passes(p.query, p.chosen_prompt, checks)]
    if cfg.one_per_query:
        found = [p for p in _best(found, cfg.video_pair_rule) if p.query_id not in texted]
    else:
        found.sort(key=lambda p: (p.query_id, -p.gap, p.chosen, p.rejected))
    rows += [_row(p.query_id, p.query, p.chosen_prompt, p.rejected_prompt, "video",
                  p.chosen_score, p.rejected_score) for p in found]
    return pl.DataFrame(rows, schema=polars_schema("dpo_pairs"))


def summary(text_pairs: pl.DataFrame | None, rewards: pl.DataFrame, pairs: pl.DataFrame,
            cfg: PairsConfig, checks: ChecksConfig | None = None) -> dict[str, Any]:
    """Pairs by source, video score-gap statistics, the valid pairs dropped because their
    chosen prompt fails a hard check, and the queries left without any pair with the
    reason they have no video pair."""
    found = video_pairs(rewards, cfg.margin)
    failing = [p for p in found.pairs if not _passes(p.query, p.chosen_prompt, checks)]
    video = pairs.filter(pl.col("source") == "video")
    gaps = (video.get_column("chosen_score") - video.get_column("rejected_score")).to_list()
    paired = set(pairs.get_column("query_id").to_list())
    texted = set(pairs.filter(pl.col("source") == "text").get_column("query_id").to_list())
    queries = set(rewards.get_column("query_id").to_list())
    if cfg.text_feedback and text_pairs is not None:
        queries |= set(text_pairs.get_column("query_id").to_list())
    without = {q: found.no_pair.get(q, NO_SCORED_VIDEO) for q in sorted(queries - paired)}
    return {
        "pairs": pairs.height,
        "by_source": dict(Counter(pairs.get_column("source").to_list())),
        "queries": len(queries),
        "queries_with_pair": len(paired),
        "valid_video_pairs": len(found.pairs),
        "queries_with_valid_video_pair": len({p.query_id for p in found.pairs}),
        "video_pairs_replaced_by_text": len({p.query_id for p in found.pairs} & texted)
        if cfg.one_per_query else 0,
        "video_pairs_dropped_by_checks": len(failing),
        "score_gap": {"min": min(gaps), "mean": mean(gaps), "median": median(gaps),
                      "max": max(gaps)} if gaps else None,
        "without_pair": dict(Counter(without.values())),
        "queries_without_pair": without,
        "margin": cfg.margin, "one_per_query": cfg.one_per_query,
        "text_feedback": cfg.text_feedback,
    }
