"""Near-duplicate removal: the scalable filter agrees with the plain O(n^2) reference."""

import json
import random

import numpy as np
import polars as pl
import pytest

from vpo_core.config import NearDuplicateConfig
from vpo_core.curate.bleu import sentence_bleu
from vpo_core.curate.dedup import (
    near_duplicates,
    pair_bleu_many,
    query_ids,
    reference_near_duplicates,
)
from vpo_core.curate.sources import bundled_path
from vpo_core.curate.textstats import Tokens, tokenize


def _edit(rng: random.Random, text: str) -> str:
    words = text.split()
    kind = rng.randrange(4)
    if kind == 0:
        return text + ", 4k"
    if kind == 1 and len(words) > 5:
        del words[rng.randrange(len(words))]
    elif kind == 2:
        i = rng.randrange(len(words))
        words[i] = words[i][::-1]
    else:
        words.insert(rng.randrange(len(words)), "cinematic")
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """800 real queries with 300 small edits of them mixed in (near duplicates)."""
    rng = random.Random(7)
    real = [q for q in json.loads(bundled_path().read_text()) if len(q.split()) >= 4][:800]
    edits = [_edit(rng, rng.choice(real)) for _ in range(300)]
    mixed = real + edits
    rng.shuffle(mixed)
    return mixed


def test_scalable_filter_equals_reference(corpus: list[str]) -> None:
    cfg = NearDuplicateConfig()
    ours = near_duplicates(Tokens.from_texts(pl.Series(corpus)), cfg)
    ref = reference_near_duplicates([tokenize(t) for t in corpus], cfg.bleu_order,
                                    cfg.threshold)
    assert ref.kept.sum() < len(corpus) - 200                 # the edits are caught
    assert np.array_equal(ours.kept, ref.kept)
    dropped = ~ours.kept
    assert (ours.bleu[dropped] > cfg.threshold).all()
    assert (ours.duplicate_of[dropped] < np.flatnonzero(dropped)).all()  # an earlier query
    assert ours.kept[ours.duplicate_of[dropped]].all()                  # that was kept


def test_vectorised_bleu_is_exact(corpus: list[str]) -> None:
    tok = Tokens.from_texts(pl.Series(corpus))
    rng = np.random.default_rng(0)
    q, r = rng.integers(0, len(corpus), 500), rng.integers(0, len(corpus), 500)
    fast = pair_bleu_many(tok, q, r, 3)
    slow = [sentence_bleu(tokenize(corpus[a]), [tokenize(corpus[b])])
            for a, b in zip(q, r, strict=True)]
    assert fast == pytest.approx(slow, abs=1e-12)


def test_greedy_compares_with_kept_queries_only() -> None:
    # BLEU: second vs first 0.89 (dropped); third vs second 0.79 but vs first 0.68, and
    # the second is gone, so the third stays, as in the reference filter.
    texts = ["a red fox runs through fresh snow at dawn",
             "a red fox runs through fresh snow at dawn, 4k",
             "a red fox runs through the fresh snow at dawn, 4k",
             "a spaceship lands on a purple desert planet"]
    ours = near_duplicates(Tokens.from_texts(pl.Series(texts)), NearDuplicateConfig())
    ref = reference_near_duplicates([tokenize(t) for t in texts])
    assert ours.kept.tolist() == ref.kept.tolist() == [True, False, True, True]
    assert ours.duplicate_of[1] == 0


def test_disabled_threshold_keeps_everything(corpus: list[str]) -> None:
    cfg = NearDuplicateConfig(threshold=1.0)
    assert near_duplicates(Tokens.from_texts(pl.Series(corpus[:200])), cfg).kept.all()


def test_query_ids_are_stable() -> None:
    # the id scheme is part of the data contract: changing it breaks joins across runs
    assert query_ids(pl.Series(["a cat on the grass"])).to_list() == ["q8966ff2f2335c261"]
