"""BLEU and Texygen self-BLEU: hand-computed cases and agreement with nltk."""

import json
import math
import random

import pytest
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import sentence_bleu as nltk_bleu

from vpo_core.curate.bleu import self_bleu, sentence_bleu
from vpo_core.curate.sources import bundled_path
from vpo_core.curate.textstats import tokenize

WEIGHTS = (1 / 3,) * 3
SMOOTH = SmoothingFunction().method1


def test_hand_computed_bleu() -> None:
    # unigrams 5/6 (the x2, cat, on, mat), bigrams 3/5 (the cat, on the, the mat),
    # trigrams 1/4 (on the mat), equal lengths so no brevity penalty:
    # (5/6 * 3/5 * 1/4) ** (1/3) = (1/8) ** (1/3) = 0.5
    hyp, ref = "the cat sat on the mat".split(), "the cat is on the mat".split()
    assert sentence_bleu(hyp, [ref], order=3) == pytest.approx(0.5)


def test_hand_computed_smoothing_and_brevity() -> None:
    # no trigram matches: method 1 uses 0.1 / 1 -> (2/3 * 1/2 * 0.1) ** (1/3)
    assert sentence_bleu(list("abc"), [list("abd")]) == pytest.approx((1 / 30) ** (1 / 3))
    # a short hypothesis is penalised: BP = exp(1 - 6/3)
    hyp, ref = "the cat sat".split(), "the cat sat on the mat".split()
    assert sentence_bleu(hyp, [ref]) == pytest.approx(math.exp(1 - 2))
    assert sentence_bleu(["zebra"], [["cat"]]) == 0.0          # no unigram in common


def test_hand_computed_self_bleu() -> None:
    # "a b c" and "a b d" each score (1/30) ** (1/3) against the others; "x y z" scores 0
    sents = [list("abc"), list("abd"), list("xyz")]
    assert self_bleu(sents, order=3) == pytest.approx(2 * (1 / 30) ** (1 / 3) / 3)


@pytest.fixture(scope="module")
def real_queries() -> list[list[str]]:
    queries = json.loads(bundled_path().read_text())
    random.Random(3).shuffle(queries)
    return [t for t in (tokenize(q) for q in queries[:120]) if t]


def test_sentence_bleu_matches_nltk(real_queries: list[list[str]]) -> None:
    rng = random.Random(0)
    for _ in range(300):
        hyp, *refs = rng.sample(real_queries, rng.randint(2, 4))
        assert sentence_bleu(hyp, refs) == pytest.approx(
            nltk_bleu(refs, hyp, WEIGHTS, smoothing_function=SMOOTH), abs=1e-12)


def test_self_bleu_is_texygen(real_queries: list[list[str]]) -> None:
    """Texygen: mean over sentences of nltk BLEU against all the other sentences."""
    sents = real_queries[:60] + real_queries[:5]             # some exact repeats too
    texygen = sum(nltk_bleu(sents[:i] + sents[i + 1:], s, WEIGHTS, smoothing_function=SMOOTH)
                  for i, s in enumerate(sents)) / len(sents)
    assert self_bleu(sents, order=3) == pytest.approx(texygen, abs=1e-12)
