"""Character classes and word tokens of many strings at once, from their UTF-8 bytes.

Regular expressions cost about 1.5 µs a string each in polars, which adds up to tens of
seconds over VidProM's 1.67M prompts. Most prompts are ASCII, so the counts the rules
need come from one byte lookup table and ``np.add.reduceat``; the few strings with other
characters are counted with Unicode-aware polars regexes instead.

Tokens are maximal runs of ``[a-z0-9_]`` or non-ASCII characters of the lower-cased
text (:func:`tokenize` is the same rule in plain Python). They are hashed straight from
the bytes with a polynomial hash, so no per-word Python strings are ever made.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

# Punctuation that is ordinary in prompts and not "special".
PUNCT = ".,;:!?'\"()[]-&/+#%*@_"
_UNI_PUNCT = "’‘“”—–…«»·"
_CHUNK_BYTES = 8 << 20
_THREADS = 2
_P = np.uint64(0x100000001B3)
_P_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))


def _packed_classes() -> np.ndarray:
    """Byte -> four 16-bit counters in one uint64: letter, space, special, non-ASCII.
    Summing the packed values of a string's bytes counts all four at once (exact for
    strings shorter than 65,536 bytes; longer ones are counted with regexes)."""
    table = np.zeros(256, dtype=np.uint64)
    letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    ordinary = letters + b"0123456789 \t\n\r\x0b\x0c" + PUNCT.encode()
    table[:128] = np.uint64(1 << 32)  # special unless listed below
    table[np.frombuffer(ordinary, dtype=np.uint8)] = 0
    table[np.frombuffer(letters, dtype=np.uint8)] = 1
    table[np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)] = np.uint64(1 << 16)
    table[128:] = np.uint64(1 << 48)
    return table


_PACKED = _packed_classes()
_FIELD = np.uint64(0xFFFF)
_WORD = np.zeros(256, dtype=bool)
_WORD[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789_", dtype=np.uint8)] = True
_WORD[128:] = True
_TOKEN = re.compile(r"[a-z0-9_\u0080-\U0010ffff]+")


def tokenize(text: str) -> list[str]:
    """Words of a text as the curate stage sees them (lower case, ``[a-z0-9_]`` runs and
    non-ASCII runs; punctuation separates)."""
    return _TOKEN.findall(text.lower())


def _buffers(s: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of a string Series; nulls become empty strings."""
    arr = s.fill_null("").rechunk().to_arrow()
    if not len(arr):
        return np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.uint8)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr)
                                                                + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    return offsets - offsets[0], data


def _row_chunks(offsets: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges of about _CHUNK_BYTES bytes each (at least one row)."""
    rows, lo, out = len(offsets) - 1, 0, []
    while lo < rows:
        hi = int(np.searchsorted(offsets, offsets[lo] + _CHUNK_BYTES, side="right")) - 1
        hi = min(rows, max(hi, lo + 1))
        out.append((lo, hi))
        lo = hi
    return out


def _row_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of per-byte values over each string of a chunk (0 for empty strings)."""
    sums = np.zeros(len(offsets) - 1, dtype=values.dtype)
    inside = offsets[:-1] < len(values)  # trailing empty strings start at the end
    if inside.any():
        sums[inside] = np.add.reduceat(values, offsets[:-1][inside])
    return np.where(offsets[1:] > offsets[:-1], sums, 0)


def char_stats(s: pl.Series) -> pl.DataFrame:
    """Per string: ``chars``, ``nonspace``, ``letters``, ``special`` (neither letter, digit,
    space nor ordinary punctuation) and ``non_latin`` (letters outside the Latin script)."""
    offsets, data = _buffers(s)
    packed = np.zeros(len(offsets) - 1, dtype=np.uint64)

    def count(rows: tuple[int, int]) -> None:
        lo, hi = rows
        packed[lo:hi] = _row_sums(_PACKED[data[offsets[lo]:offsets[hi]]],
                                  offsets[lo:hi + 1] - offsets[lo])

    with ThreadPoolExecutor(_THREADS) as pool:  # numpy releases the GIL
        list(pool.map(count, _row_chunks(offsets)))
    chars = np.diff(offsets)
    field = [((packed >> np.uint64(16 * k)) & _FIELD).astype(np.int64) for k in range(4)]
    out = pl.DataFrame({
        "chars": chars, "nonspace": chars - field[1], "letters": field[0],
        "special": field[2], "non_latin": np.zeros(len(chars), dtype=np.int64),
    }).cast(pl.Int32)
    other = np.flatnonzero((field[3] > 0) | (chars >= 1 << 16))
    if len(other):
        sub = s.gather(other).fill_null("")
        uni = pl.DataFrame({
            "chars": sub.str.len_chars(),
            "nonspace": sub.str.len_chars() - sub.str.count_matches(r"\s"),
            "letters": sub.str.count_matches(r"[\p{L}\p{M}]"),
            "special": sub.str.count_matches(
                rf"[^\p{{L}}\p{{M}}\p{{N}}\s{re.escape(PUNCT + _UNI_PUNCT)}]"),
            "non_latin": sub.str.count_matches(r"[\p{L}&&\P{Latin}]"),
        }).cast(pl.Int32)
        out = out.with_columns(out.get_column(c).scatter(other, uni.get_column(c))
                               for c in out.columns)
    return out


@dataclass
class Tokens:
    """Word tokens of many documents, flattened: the document of each token, its 64-bit
    hash, and the number of tokens per document."""

    doc: np.ndarray
    hashes: np.ndarray
    lengths: np.ndarray

    def gram_counts(self, n: int) -> np.ndarray:
        """Number of word n-grams of each document."""
        return np.maximum(self.lengths - n + 1, 0)

    def grams(self, n: int) -> np.ndarray:
        """Hashes of every word n-gram, document after document (see :meth:`gram_counts`);
        an n-gram never spans two documents."""
        m = len(self.hashes) - n + 1
        if m <= 0:
            return np.empty(0, np.uint64)
        g = self.hashes[:m]
        for k in range(1, n):
            g = mix(g, self.hashes[k:k + m])
        return g[self.doc[:m] == self.doc[n - 1:n - 1 + m]] if n > 1 else g.copy()

    def take(self, rows: np.ndarray) -> Tokens:
        """The tokens of some documents (row indices, ascending), renumbered from 0."""
        lengths = self.lengths[rows]
        starts = np.concatenate([[0], np.cumsum(self.lengths)])[rows]
        total = int(lengths.sum())
        new_starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
        index = np.repeat(starts - new_starts, lengths) + np.arange(total)
        return Tokens(np.repeat(np.arange(len(rows), dtype=np.int32), lengths),
                      self.hashes[index], lengths)

    def stats(self) -> pl.DataFrame:
        """Per document: ``tok_count``, ``tok_unique`` and ``tok_repeat`` (the longest run of
        one word repeated back to back)."""
        n = len(self.lengths)
        unique = (pl.DataFrame({"doc": self.doc, "h": self.hashes}).group_by("doc")
                  .agg(pl.col("h").n_unique()))
        tok_unique = np.zeros(n, dtype=np.int64)
        tok_unique[unique["doc"].to_numpy()] = unique["h"].to_numpy()
        same = (self.hashes[1:] == self.hashes[:-1]) & (self.doc[1:] == self.doc[:-1])
        edges = np.diff(np.concatenate([[0], same.astype(np.int8), [0]]))
        run_start, run_end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        repeat = np.minimum(self.lengths, 1)
        np.maximum.at(repeat, self.doc[run_start], run_end - run_start + 1)
        return pl.DataFrame({"tok_count": self.lengths, "tok_unique": tok_unique,
                             "tok_repeat": repeat}).cast(pl.Int32)

    @classmethod
    def from_texts(cls, texts: pl.Series, seed: int = 0) -> Tokens:
        """Tokenise and hash (see :func:`tokenize`), a few megabytes of text at a time."""
        offsets, data = _buffers(texts.fill_null("").str.to_lowercase())
        chunks = _row_chunks(offsets)
        size = max((offsets[hi] - offsets[lo] for lo, hi in chunks), default=0)
        p = np.uint64((int(_P) ^ (seed * 2)) | 1)
        powers = _powers(p, size)
        inverse = _powers(np.uint64(pow(int(p), -1, 1 << 64)), size)
        with ThreadPoolExecutor(_THREADS) as pool:  # numpy releases the GIL
            parts = list(pool.map(lambda c: _hash_runs(
                data[offsets[c[0]]:offsets[c[1]]], offsets[c[0]:c[1] + 1] - offsets[c[0]],
                powers, inverse), chunks))
        counts = [c for c, _ in parts]
        hashes = [h for _, h in parts]
        lengths = np.concatenate(counts) if counts else np.zeros(len(offsets) - 1, np.int64)
        return cls(np.repeat(np.arange(len(lengths), dtype=np.int32), lengths),
                   np.concatenate(hashes) if hashes else np.empty(0, np.uint64), lengths)


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) modulo 2^64."""
    out = np.full(max(n, 1), base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, out=out)


def _hash_runs(data: np.ndarray, offsets: np.ndarray, powers: np.ndarray,
               inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word runs of a chunk of concatenated strings: tokens per string and their hashes.

    A run's hash is sum(b_j * P^j) over its bytes, shifted to the run's start with P's
    inverse (P is odd, so invertible modulo 2^64), then mixed with the run's length.
    """
    n = len(data)
    word = _WORD[data]
    first = word.copy()
    first[1:] &= ~word[:-1]
    last = word.copy()
    last[:-1] &= ~word[1:]
    cut = offsets[1:-1][offsets[1:-1] < n]  # a token never spans two strings
    first[cut] = word[cut]
    last[cut[cut > 0] - 1] = word[cut[cut > 0] - 1]
    starts = np.flatnonzero(first)
    ends = np.flatnonzero(last) + 1
    prefix = np.empty(n + 1, dtype=np.uint64)
    prefix[0] = 0
    np.cumsum((data + np.uint64(1)) * powers[:n], out=prefix[1:])
    raw = (prefix[ends] - prefix[starts]) * inverse[starts]
    return (_row_sums(first.astype(np.int64), offsets),
            _finalize(raw ^ (ends - starts).astype(np.uint64)))


def _finalize(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place: spreads a hash over all 64 bits."""
    tmp = np.empty_like(x)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None)):
        np.right_shift(x, np.uint64(shift), out=tmp)
        np.bitwise_xor(x, tmp, out=x)
        if mult is not None:
            np.multiply(x, np.uint64(mult), out=x)
    return x


def mix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Order-dependent combination of two 64-bit hash arrays (a new array)."""
    x = a * np.uint64(0x9E3779B97F4A7C15)
    np.bitwise_xor(x, b + np.uint64(0x632BE59BD9B4E019), out=x)
    return _finalize(x)


def string_hashes(s: pl.Series) -> np.ndarray:
    """A 64-bit hash of each whole string (same polynomial scheme as the tokens)."""
    offsets, data = _buffers(s)
    out = np.empty(len(offsets) - 1, dtype=np.uint64)
    for lo, hi in _row_chunks(offsets):
        chunk = data[offsets[lo]:offsets[hi]]
        local = offsets[lo:hi + 1] - offsets[lo]
        powers = _powers(_P, len(chunk))
        prefix = np.zeros(len(chunk) + 1, dtype=np.uint64)
        np.cumsum((chunk + np.uint64(1)) * powers, out=prefix[1:])
        raw = (prefix[local[1:]] - prefix[local[:-1]]) * _powers(_P_INV, len(chunk) + 1)[
            local[:-1]]
        out[lo:hi] = _finalize(raw ^ np.diff(local).astype(np.uint64))
    return out
