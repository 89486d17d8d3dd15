"""Normalisation and flag parsing of raw VidProM-style queries."""

import polars as pl
import pytest

from vpo_core.curate.normalize import flag_frame, normalize_series, normalize_text, parse_flags


@pytest.mark.parametrize(("raw", "expected"), [
    ("a cat&#39;s toy", "a cat's toy"),
    ("say &quot;hi&quot; &amp; wave", 'say "hi" & wave'),
    ("double &amp;#39;escaped&amp;#39;", "double 'escaped'"),
    ("cafe\u0301 au lait", "café au lait"),                       # NFC
    ("tab\there\nnew  line\r\n end", "tab here new line end"),    # whitespace
    ("bell\x07 and\x00 nul", "bell and nul"),                     # control characters
    ("zero\u200bwidth", "zero width"),                             # format characters
    ("non\u00a0breaking", "non breaking"),
    ('ride on <img loading="lazy" alt="🐎" src="https://x/1.svg"> now', "ride on 🐎 now"),
    ('<a href="https://s.mj.run/x">https://s.mj.run/x</a> photo', "https://s.mj.run/x photo"),
    ("<b>bold</b> move", "bold move"),
    ("a <dog and cat> stay", "a <dog and cat> stay"),              # not a known tag
    ("   padded   ", "padded"),
])
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_normalize_series_keeps_nulls_and_order() -> None:
    out = normalize_series(pl.Series(["a&amp;b", None, "é  x"], dtype=pl.String))
    assert out.to_list() == ["a&b", None, "é x"]


@pytest.mark.parametrize(("query", "text", "flags"), [
    ("a cat -ar 16:9", "a cat", {"aspect_ratio": "16:9"}),
    ("a cat --ar 9:16", "a cat", {"aspect_ratio": "9:16"}),
    ("a cat -ar 16 x 9 in rain", "a cat in rain", {"aspect_ratio": "16 x 9"}),
    ("city -motion 3 from a train window", "city from a train window", {"motion": "3"}),
    ("city -gs 24 -fps 24 -seed 11342711863440741027", "city",
     {"guidance_scale": "24", "fps": "24", "seed": "11342711863440741027"}),
    ("lab -camera: wide aerial shot", "lab", {"camera": "wide aerial shot"}),
    ('man -neg "ugly, warped" -ar 9:16', "man", {"negative": '"ugly, warped"',
                                                "aspect_ratio": "9:16"}),
    ("storm with lightning—FPS 24 —negative morphing", "storm with lightning",
     {"fps": "24", "negative": "morphing"}),
    ("photo --no text, watermark", "photo", {"negative": "text, watermark"}),
    ("well-known -no people here", "well-known -no people here", {}),   # prose, not a flag
    ("- A close-up of an eye, -ar 9:16", "- A close-up of an eye", {"aspect_ratio": "9:16"}),
    ("cinematic -motion high", "cinematic", {"motion": "high"}),
    ("photo --ar 9:16 --ar 16:9", "photo", {"aspect_ratio": "16:9"}),     # last one wins
    ("a well-armed knight", "a well-armed knight", {}),
])
def test_parse_flags(query: str, text: str, flags: dict[str, str]) -> None:
    assert parse_flags(query) == (text, flags)


def test_flag_columns_are_typed() -> None:
    df = flag_frame(pl.Series([
        'a cat -ar 16:9 -motion 3 -neg "ugly, warped" -neg text -fps 24 -seed 42 -gs 7.5',
        "cinematic -motion high -fps 9000",
        "plain dog",
    ]))
    first, odd, plain = df.to_dicts()
    assert first["text"] == "a cat"
    assert first["aspect_ratio"] == "16:9"
    assert first["negative"] == ["ugly", "warped", "text"]   # -neg terms accumulate
    assert (first["motion"], first["guidance_scale"], first["fps"], first["seed"]) == \
        (3.0, 7.5, 24, "42")
    assert odd["motion"] is None and odd["fps"] is None        # not numbers / out of range
    assert odd["flags"]["motion"] == "high"                     # the raw value is kept
    assert plain["text"] == "plain dog" and plain["negative"] == []
    assert all(v is None for v in plain["flags"].values())
