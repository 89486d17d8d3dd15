"""Exact and near-duplicate removal with self-BLEU, at VidProM scale.

The near-duplicate filter is greedy in input order: a query is dropped when its BLEU
(hypothesis = the query, reference = an earlier query that was kept) is above the
threshold. :func:`reference_near_duplicates` does exactly that by comparing each query
with every kept one: O(n²), fine for a few thousand queries, hopeless for 1.67M.

:func:`near_duplicates` gets the same answer in near-linear time. MinHash-LSH over word
bigrams (unigrams for one-word texts) proposes candidates: VidProM prompts are short
(median 11 words), and BLEU-3 above 0.7 implies a large bigram overlap, so two MinHash
rows per band keep recall high. Each query is compared with the *earliest still-kept*
query of each of its LSH buckets (one comparison per bucket, however large the bucket),
and the search repeats among the queries still kept, so chains of edits resolve as the
greedy filter resolves them. Exact BLEU decides every candidate: clipped n-gram matches
are the row sums of the element-wise minimum of two sparse n-gram count vectors.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

from vpo_core.config import NearDuplicateConfig
from vpo_core.curate.bleu import EPSILON, ngrams, pair_bleu
from vpo_core.curate.textstats import Tokens, mix, string_hashes

_PAIR_CHUNK = 250_000
_SIG_DOCS = 200_000
_THREADS = 2
_MASK62 = np.uint64((1 << 62) - 1)


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def query_ids(keys: pl.Series) -> pl.Series:
    """Stable ids of dedup keys: ``q`` + 16 hex digits of their 64-bit hash (formatted
    with numpy: a Python f-string per id costs seconds at VidProM scale)."""
    h = string_hashes(keys)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    text = np.empty((len(h), 17), dtype=np.uint8)
    text[:, 0] = ord("q")
    text[:, 1:] = _HEX[(h[:, None] >> shifts) & np.uint64(15)]
    return pl.Series(text.view("S17").ravel()).cast(pl.String)


@dataclass
class NearDuplicates:
    """Outcome per query (in input order): the index of the kept query it duplicates
    (-1 when kept) and that pair's BLEU."""

    duplicate_of: np.ndarray
    bleu: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> np.ndarray:
        return self.duplicate_of < 0


def reference_near_duplicates(tokens: list[list[str]], order: int = 3,
                              threshold: float = 0.7) -> NearDuplicates:
    """The plain greedy filter: each query against every earlier kept query."""
    grams = [ngrams(t, order) for t in tokens]
    dup = np.full(len(tokens), -1, dtype=np.int64)
    score = np.zeros(len(tokens))
    kept: list[int] = []
    comparisons = 0
    for q, tq in enumerate(tokens):
        for r in kept:
            comparisons += 1
            b = pair_bleu(grams[q], len(tq), grams[r], len(tokens[r]), order)
            if b > threshold:
                dup[q], score[q] = r, b
                break
        else:
            kept.append(q)
    return NearDuplicates(dup, score, {"comparisons": comparisons})


def _signatures(tok: Tokens, cfg: NearDuplicateConfig) -> np.ndarray:
    """MinHash signatures (docs x bands*rows, uint32) over word bigrams, the single word
    of one-word texts; all zeros for texts without words. Permutations are multiply-shift
    hashes (the high 32 bits of a*x + b), a few million shingles at a time on two threads."""
    rng = np.random.default_rng(cfg.seed)
    perms = cfg.bands * cfg.rows_per_band
    a = rng.integers(1, 2**63, size=perms, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=perms, dtype=np.uint64)
    sig = np.zeros((len(tok.lengths), perms), dtype=np.uint32)
    single = np.flatnonzero(tok.lengths == 1)
    first = np.concatenate([[0], np.cumsum(tok.lengths)])[:-1]
    sig[single] = ((tok.hashes[first[single], None] * a + b) >> np.uint64(32)).astype(np.uint32)
    shingles = tok.grams(2)
    counts = tok.gram_counts(2)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    docs = np.flatnonzero(counts)
    for lo in range(0, len(docs), _SIG_DOCS):
        chunk = docs[lo:lo + _SIG_DOCS]
        base = offsets[chunk[0]]
        part = shingles[base:offsets[chunk[-1] + 1]]
        starts = offsets[chunk] - base

        def fill(p: int, chunk: np.ndarray = chunk, part: np.ndarray = part,
                 starts: np.ndarray = starts) -> None:
            sig[chunk, p] = np.minimum.reduceat((part * a[p] + b[p]) >> np.uint64(32), starts)

        with ThreadPoolExecutor(_THREADS) as pool:
            list(pool.map(fill, range(perms)))
    return sig


def _band_keys(sig: np.ndarray, tok: Tokens, cfg: NearDuplicateConfig) -> list[np.ndarray]:
    """LSH band keys; a text without words gets keys of its own that match nothing."""
    empty = np.flatnonzero(tok.lengths == 0)  # their signature is all zeros
    keys = []
    for band in range(cfg.bands):
        cols = sig[:, band * cfg.rows_per_band:(band + 1) * cfg.rows_per_band].astype(np.uint64)
        key = cols[:, 0]
        for k in range(1, cfg.rows_per_band):
            key = mix(key, cols[:, k])
        key[empty] = empty.astype(np.uint64) | np.uint64(1 << 63)
        keys.append(key)
    return keys


def _bleu_upper_bound(tok: Tokens, q: np.ndarray, r: np.ndarray, order: int) -> np.ndarray:
    """An upper bound of BLEU(hyp=q, ref=r) from the two lengths alone: the brevity
    penalty, and precisions that cannot exceed (ref n-grams) / (hyp n-grams). Pairs whose
    bound is below the threshold cannot be near duplicates and skip the exact BLEU."""
    hyp = tok.lengths[q].astype(np.float64)
    ref = tok.lengths[r].astype(np.float64)
    bound = np.ones(len(q))
    for n in range(order):  # n-grams of order n + 1; smoothing gives EPSILON when none
        bound *= np.minimum(1.0, np.maximum(ref - n, EPSILON) / np.maximum(hyp - n, 1.0))
    penalty = np.where(hyp > ref, 1.0, np.exp(1 - ref / np.maximum(hyp, 1)))
    return penalty * bound ** (1 / order)


def _agreement(sig: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Share of equal MinHash values of each pair: an estimate of their bigram Jaccard."""
    out = np.empty(len(q))
    for lo in range(0, len(q), _PAIR_CHUNK):
        out[lo:lo + _PAIR_CHUNK] = (sig[q[lo:lo + _PAIR_CHUNK]]
                                    == sig[r[lo:lo + _PAIR_CHUNK]]).mean(axis=1)
    return out


def _earliest_partners(keys: list[np.ndarray], active: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (q, r): every active query q with the earliest active query r < q
    that shares one of its LSH buckets, once per distinct r."""
    ids = np.flatnonzero(active)
    frame = pl.DataFrame({"i": ids, **{f"k{j}": key[ids] for j, key in enumerate(keys)}})
    partners = frame.select(pl.col("i").min().over(f"k{j}").alias(f"p{j}")
                            for j in range(len(keys))).to_numpy()
    partners.sort(axis=1)
    new = np.ones_like(partners, dtype=bool)
    new[:, 1:] = partners[:, 1:] != partners[:, :-1]
    new &= partners != ids[:, None]
    rows, cols = np.nonzero(new)
    return ids[rows], partners[rows, cols]


def _matches(tok: Tokens, n: int, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Clipped n-gram matches of hypothesis q against reference r, for arrays of pairs
    (indices into ``tok``'s documents), two chunks of pairs at a time."""
    g = tok.grams(n)  # document after document: the CSR arrays can be built directly
    np.bitwise_and(g, _MASK62, out=g)
    indptr = np.zeros(len(tok.lengths) + 1, dtype=np.int64)
    np.cumsum(tok.gram_counts(n), out=indptr[1:])
    counts = sp.csr_matrix((np.ones(len(g), np.int8), g.view(np.int64), indptr),
                           shape=(len(tok.lengths), 1 << 62))
    counts.sum_duplicates()
    out = np.zeros(len(q))

    def chunk(lo: int) -> None:
        qs, rs = q[lo:lo + _PAIR_CHUNK], r[lo:lo + _PAIR_CHUNK]
        out[lo:lo + len(qs)] = np.asarray(counts[qs].minimum(counts[rs]).sum(axis=1)).ravel()

    with ThreadPoolExecutor(_THREADS) as pool:
        list(pool.map(chunk, range(0, len(q), _PAIR_CHUNK)))
    return out


def pair_bleu_many(tok: Tokens, q: np.ndarray, r: np.ndarray, order: int) -> np.ndarray:
    """Exact BLEU(hyp=q, ref=r) for arrays of pairs (nltk semantics, smoothing method 1)."""
    docs = np.union1d(q, r)
    sub = tok.take(docs)  # only the documents in these pairs
    qs, rs = np.searchsorted(docs, q), np.searchsorted(docs, r)
    matches = np.stack([_matches(sub, n, qs, rs) for n in range(1, order + 1)], axis=1)
    del sub
    hyp_len = tok.lengths[q].astype(np.float64)
    ref_len = tok.lengths[r].astype(np.float64)
    den = np.maximum(1.0, hyp_len[:, None] - np.arange(order)[None, :])
    log_p = np.log(np.where(matches > 0, matches, EPSILON) / den).mean(axis=1)
    penalty = np.where(hyp_len > ref_len, 1.0, np.exp(1 - ref_len / np.maximum(hyp_len, 1)))
    return np.where((matches[:, 0] > 0) & (hyp_len > 0), penalty * np.exp(log_p), 0.0)


def near_duplicates(tok: Tokens, cfg: NearDuplicateConfig) -> NearDuplicates:
    """Greedy self-BLEU near-duplicate filter over tokenised queries, in order."""
    n = len(tok.lengths)
    dup = np.full(n, -1, dtype=np.int64)
    score = np.zeros(n)
    stats = {"candidate_pairs": 0, "bleu_pairs": 0, "rounds": 0}
    if n < 2:
        return NearDuplicates(dup, score, stats)
    sig = _signatures(tok, cfg)
    keys = _band_keys(sig, tok, cfg)
    checked = np.empty(0, np.uint64)
    for _ in range(cfg.rounds):
        q, r = _earliest_partners(keys, dup < 0)
        packed = (r.astype(np.uint64) << np.uint64(32)) | q.astype(np.uint64)
        fresh = ~pl.Series(packed).is_in(pl.Series(checked).implode()).to_numpy()
        q, r, packed = q[fresh], r[fresh], packed[fresh]
        stats["rounds"] += 1
        stats["candidate_pairs"] += len(q)
        if not len(q):
            break
        checked = np.concatenate([checked, packed])
        possible = _bleu_upper_bound(tok, q, r, cfg.bleu_order) * (1 + 1e-9) > cfg.threshold
        q, r = q[possible], r[possible]
        close = _agreement(sig, q, r) >= cfg.min_agreement
        q, r = q[close], r[close]
        stats["bleu_pairs"] += len(q)
        bleu = pair_bleu_many(tok, q, r, cfg.bleu_order)
        hit = bleu > cfg.threshold
        if not _resolve(q[hit], r[hit], bleu[hit], dup, score):
            break
    return NearDuplicates(dup, score, stats)


def _resolve(q: np.ndarray, r: np.ndarray, bleu: np.ndarray, dup: np.ndarray,
             score: np.ndarray) -> bool:
    """Greedy in input order over verified edges (q later than r): q goes when one of its
    partners is still kept. Returns whether anything changed."""
    changed = False
    order = np.lexsort((-bleu, q))
    for qi, ri, b in zip(q[order].tolist(), r[order].tolist(), bleu[order].tolist(),
                         strict=True):
        if dup[qi] < 0 and dup[ri] < 0:
            dup[qi], score[qi] = ri, b
            changed = True
    return changed
