"""Byte-level character counts and tokens agree with plain-Python definitions."""

import json
import unicodedata

import numpy as np
import polars as pl

from vpo_core.curate.sources import bundled_path
from vpo_core.curate.textstats import PUNCT, Tokens, char_stats, string_hashes, tokenize

ODD = ["", "Héllo, Wörld! ÉCOLE", "a  b", "東京 タワー。", "Черный BMW", "🔥 fire ★",
       "x" * 70_000, "!!", "a,b", "नमस्ते दुनिया", "tab\tsep"]


def _texts() -> list[str]:
    return json.loads(bundled_path().read_text())[:1500] + ODD


def _reference(text: str) -> tuple[int, int, int, int, int]:
    letters = [c for c in text if unicodedata.category(c)[0] in "LM"]
    ordinary = set(PUNCT + "’‘“”—–…«»·")
    special = sum(1 for c in text if unicodedata.category(c)[0] not in "LMN"
                  and not c.isspace() and c not in ordinary)
    non_latin = sum(1 for c in letters if c.isalpha() and "LATIN" not in unicodedata.name(c, ""))
    return (len(text), sum(not c.isspace() for c in text), len(letters), special, non_latin)


def test_char_stats_match_unicode_definitions() -> None:
    texts = _texts()
    stats = char_stats(pl.Series(texts))
    assert stats.columns == ["chars", "nonspace", "letters", "special", "non_latin"]
    for text, row in zip(texts, stats.rows(), strict=True):
        assert row == _reference(text), text[:40]


def test_tokens_match_tokenize() -> None:
    texts = _texts()
    tok = Tokens.from_texts(pl.Series(texts))
    expected = [tokenize(t) for t in texts]
    assert tok.lengths.tolist() == [len(t) for t in expected]
    seen: dict[str, int] = {}
    for word, h in zip([w for ws in expected for w in ws], tok.hashes.tolist(), strict=True):
        assert seen.setdefault(word, h) == h                  # same word, same hash
    assert len(set(seen.values())) == len(seen)               # different words, different


def test_take_and_stats() -> None:
    tok = Tokens.from_texts(pl.Series(["a b c", "", "cat cat cat cat dog", "x y"]))
    sub = tok.take(np.array([0, 2]))
    assert sub.lengths.tolist() == [3, 5]
    assert sub.hashes.tolist() == tok.hashes[[0, 1, 2, 3, 4, 5, 6, 7]].tolist()
    stats = tok.stats()
    assert stats.rows() == [(3, 3, 1), (0, 0, 0), (5, 2, 4), (2, 2, 1)]


def test_string_hashes_are_stable_and_distinct() -> None:
    a = string_hashes(pl.Series(["a cat", "a cat", "a dog", ""]))
    assert a[0] == a[1] and len({a[0], a[2], a[3]}) == 3
    assert a[0] == string_hashes(pl.Series(["a cat"]))[0]
