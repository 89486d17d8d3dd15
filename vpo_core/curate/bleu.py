"""BLEU and self-BLEU exactly as Texygen computes them (nltk's ``sentence_bleu`` with
uniform weights up to ``order`` and smoothing method 1), in plain Python.

Texygen's self-BLEU of a set is the mean, over its sentences, of the BLEU of each
sentence against all the others as references. :func:`self_bleu` gets the same number in
one pass over the n-grams instead of one nltk call per sentence: with several references
nltk clips each n-gram count by its largest count in any one reference, so keeping the
two largest counts of every n-gram is enough to know the largest among "all the others".

Tokens are lower-case ``\\w+`` words (see :func:`tokenize`); Texygen used nltk's
word_tokenize, which also counts punctuation marks as words.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

EPSILON = 0.1  # nltk SmoothingFunction.method1
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens, as the dedup stage's polars tokenizer makes them."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], order: int) -> list[Counter[tuple[str, ...]]]:
    """Counts of the 1..order-grams of a sentence."""
    return [Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
            for n in range(1, order + 1)]


def _bleu_from_counts(hyp_len: int, matches: Sequence[int], ref_len: int, order: int) -> float:
    """BLEU from clipped match counts per order, the hypothesis length and the closest
    reference length (nltk: denominators are max(1, count); 0 when no unigram matches)."""
    if hyp_len == 0 or matches[0] == 0:
        return 0.0
    log_p = 0.0
    for n in range(1, order + 1):
        denominator = max(1, hyp_len - n + 1)
        numerator = matches[n - 1] or EPSILON
        log_p += math.log(numerator / denominator) / order
    penalty = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return penalty * math.exp(log_p)


def closest_length(lengths: Sequence[int], hyp_len: int) -> int:
    """nltk's closest reference length: nearest to the hypothesis, the shorter on ties."""
    return min(lengths, key=lambda r: (abs(r - hyp_len), r))


def _closest_other(unique_lengths: list[int], count: Counter[int], length: int) -> int:
    """Closest length among all sentences but one of this length (itself)."""
    if count[length] >= 2:
        return length
    i = bisect.bisect_left(unique_lengths, length)  # unique_lengths[i] == length
    near = unique_lengths[max(0, i - 1):i] + unique_lengths[i + 1:i + 2]
    return closest_length(near, length)


def sentence_bleu(hyp: Sequence[str], refs: Sequence[Sequence[str]], order: int = 3) -> float:
    """BLEU of one tokenised hypothesis against one or more tokenised references."""
    hyp_grams = ngrams(hyp, order)
    ref_grams = [ngrams(r, order) for r in refs]
    matches = [sum(min(c, max(rg[n][g] for rg in ref_grams)) for g, c in hyp_grams[n].items())
               for n in range(order)]
    return _bleu_from_counts(len(hyp), matches, closest_length([len(r) for r in refs],
                                                               len(hyp)), order)


def pair_bleu(hyp: list[Counter], hyp_len: int, ref: list[Counter], ref_len: int,
              order: int) -> float:
    """BLEU of a hypothesis against a single reference from precomputed n-gram counts."""
    matches = [sum(min(c, ref[n].get(g, 0)) for g, c in hyp[n].items()) for n in range(order)]
    return _bleu_from_counts(hyp_len, matches, ref_len, order)


def self_bleu(sentences: Sequence[Sequence[str]], order: int = 3) -> float:
    """Texygen self-BLEU: mean BLEU of each sentence against all the others."""
    if len(sentences) < 2:
        return 0.0
    grams = [ngrams(s, order) for s in sentences]
    top: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0, 0])  # max, owners, 2nd
    for doc in grams:
        for counter in doc:
            for g, c in counter.items():
                t = top[g]
                if c > t[0]:
                    t[0], t[1], t[2] = c, 1, t[0]
                elif c == t[0]:
                    t[1] += 1
                elif c > t[2]:
                    t[2] = c
    length_count = Counter(len(s) for s in sentences)
    unique_lengths = sorted(length_count)
    total = 0.0
    for sent, doc in zip(sentences, grams, strict=True):
        matches = []
        for counter in doc:
            m = 0
            for g, c in counter.items():
                best, owners, second = top[g]
                other = second if (c == best and owners == 1) else best
                m += min(c, other)
            matches.append(m)
        ref_len = _closest_other(unique_lengths, length_count, len(sent))
        total += _bleu_from_counts(len(sent), matches, ref_len, order)
    return total / len(sentences)
