"""Normalisation of raw queries and parsing of the flags users type.

VidProM prompts come from Discord bots and web forms: HTML entities (``&#39;``,
``&quot;``, sometimes escaped twice), chat-log markup (emoji ``<img alt=...>`` tags,
``<a href>`` links), control characters, odd whitespace. Users also type the options of
Pika and Midjourney inline: ``-ar 16:9``, ``-neg blurry, text``, ``-camera zoom in``,
``-motion 3``, ``-gs 20``, ``-seed 42``, ``-fps 24`` (with ``--``, em dashes or a colon).
The flags are kept in the query the LLM sees (they are constraints: ``-neg`` means
"must not contain") and parsed into columns; ``text`` is the query without them.

Normalisation is vectorised with polars so 1.67M prompts take seconds; there is one
implementation, and :func:`normalize_text` runs it on a single string.
"""

from __future__ import annotations

import html

import polars as pl

# Chat-log markup: emoji images become their alt text, links their text, known tags vanish.
_IMG_ALT = r'(?is)<img\b[^>]*?\balt="([^"]*)"[^>]*>'
_ANCHOR = r"(?is)<a\b[^>]*>(.*?)</a>"
_TAGS = r"(?i)</?(?:a|img|span|div|p|br|b|i|em|strong|u|s|font|code|pre|h[1-6])\b[^>]*>"
_UNICODE_CONTROL = r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]"


def _where(mask: pl.Series) -> pl.Series:
    return mask.fill_null(False).arg_true()


def normalize_series(raw: pl.Series) -> pl.Series:
    """Markup, HTML entities (twice, for double escaping), NFC, control characters and
    whitespace. Nulls stay null.

    Each costly step runs only on the rows that need it: markup on rows with ``<``,
    Python's unescape on rows with ``&``, Unicode normalisation on non-ASCII rows.
    """
    text = raw
    rows = _where(text.str.contains("<", literal=True))
    if len(rows):
        text = text.scatter(rows, text.gather(rows).str.replace_all(_IMG_ALT, " ${1} ")
                            .str.replace_all(_ANCHOR, " ${1} ").str.replace_all(_TAGS, " "))
    rows = _where(text.str.contains("&", literal=True))
    if len(rows):
        text = text.scatter(rows, [html.unescape(html.unescape(t))
                                   for t in text.gather(rows).to_list()])
    rows = _where(text.str.len_bytes() != text.str.len_chars())
    if len(rows):
        text = text.scatter(rows, text.gather(rows).str.normalize("NFC")
                            .str.replace_all(_UNICODE_CONTROL, " ")
                            .str.replace_all(r"\s+", " "))
    rows = _where(text.str.contains(r"[\x00-\x1f\x7f]"))
    if len(rows):
        text = text.scatter(rows, text.gather(rows).str.replace_all(r"[\x00-\x1f\x7f]", " "))
    return text.str.replace_all(" {2,}", " ").str.strip_chars()


def normalize_text(text: str) -> str:
    """Normalise one string exactly as the curate stage does."""
    return normalize_series(pl.Series([text], dtype=pl.String)).item()


# ------------------------------------------------------------------ flags
FLAG_KEYS = {
    "ar": "aspect_ratio", "aspect": "aspect_ratio",
    "neg": "negative", "negative": "negative", "no": "negative",
    "camera": "camera", "cam": "camera",
    "motion": "motion",
    "gs": "guidance_scale", "guidance": "guidance_scale",
    "seed": "seed",
    "fps": "fps",
}
SCALAR_FLAGS = ["aspect_ratio", "camera", "motion", "guidance_scale", "seed", "fps"]
_NUMERIC = {"motion", "guidance_scale", "seed", "fps"}
_SEP, _KV = "\x1f", "\x1e"
_KEYS = "aspect|ar|negative|neg|camera|cam|motion|gs|guidance|seed|fps"
_AFTER = r"(?:[ \t]*[:=][ \t]*|(\s|$))"
# A flag starts a word ("-ar", "--ar") or follows an em/en dash, which autocorrect makes
# of "--" and which may touch the word before ("lightning—fps 24"). "--no" is
# Midjourney's negative; "-no" with one dash is left alone, it is usually prose.
_MARKERS = [
    (rf"(?i)(^|[\s,.;])--?({_KEYS}){_AFTER}", f"${{1}}{_SEP}${{2}}{_KV}${{3}}"),
    (rf"(?i)(^|[\s,.;])--(no){_AFTER}", f"${{1}}{_SEP}${{2}}{_KV}${{3}}"),
    (rf"(?i)[—–]{{1,2}}({_KEYS}|no){_AFTER}", f"{_SEP}${{1}}{_KV}${{2}}"),
]
FLAG_HINT = rf"(?i)(?:--?|[—–])(?:{_KEYS}|no)"
_RATIO = r"^\s*\d+(?:\.\d+)?\s*[:/xX]\s*\d+(?:\.\d+)?"
_NUMBER = r"^\s*([-+]?\d+(?:\.\d+)?)"
_LEAD_RATIO = rf"({_RATIO})"
_LEAD_NUMBER = r"^(\s*[-+]?\d+(?:\.\d+)?)"
_QUOTES = "\"'“”‘’«»"
FLAGS_STRUCT = pl.Struct({k: pl.String for k in ["aspect_ratio", "negative", *SCALAR_FLAGS[1:]]})
_NO_FLAGS = pl.lit({k: None for k in FLAGS_STRUCT.to_schema()}, FLAGS_STRUCT)


def _flag_values(segments: pl.DataFrame) -> pl.DataFrame:
    """One row per flag: its row, canonical key, raw value, and the words after a
    one-value flag that belong back to the text."""
    key = (pl.col("seg").str.extract(f"^([^{_KV}]*){_KV}", 1).str.to_lowercase()
           .replace_strict(FLAG_KEYS, return_dtype=pl.String))
    value = pl.col("seg").str.replace(f"^[^{_KV}]*{_KV}", "")
    lead = (pl.when(pl.col("key") == "aspect_ratio")
            .then(pl.col("value").str.extract(_LEAD_RATIO, 1))
            .when(pl.col("key").is_in(list(_NUMERIC)))
            .then(pl.col("value").str.extract(_LEAD_NUMBER, 1)))
    return (segments.with_columns(key.alias("key"), value.alias("value"))
            .with_columns(lead.alias("lead"))
            .with_columns(
                pl.when(pl.col("lead").is_not_null())
                .then(pl.col("value").str.slice(pl.col("lead").str.len_chars()))
                .otherwise(pl.lit("")).alias("rest"),
                pl.coalesce("lead", "value").str.strip_chars().str.strip_chars_end(",;")
                .alias("raw")))


def _parse_marked(marked: pl.Series) -> pl.DataFrame:
    """Flag columns of queries whose flags were marked with the separator characters."""
    parts = pl.DataFrame({"parts": marked.str.split(_SEP)}).with_row_index("row")
    segments = (parts.select("row", pl.col("parts").list.slice(1).alias("seg"))
                .explode("seg").drop_nulls("seg"))
    per_row = _flag_values(segments).group_by("row").agg(
        *[pl.col("raw").filter(pl.col("key") == k).last().alias(k) for k in SCALAR_FLAGS],
        pl.col("raw").filter(pl.col("key") == "negative").str.join(", ").alias("negative"),
        pl.col("rest").str.join(" ").alias("rest"),
    ).with_columns(pl.col("negative").replace("", None))
    out = parts.select("row", pl.col("parts").list.first().alias("head")).join(
        per_row, on="row", how="left").sort("row")
    number = {k: pl.col(k).str.extract(_NUMBER, 1).cast(pl.Float64) for k in _NUMERIC}
    terms = pl.when(pl.col("negative").is_not_null()).then(
        pl.col("negative").str.strip_chars(_QUOTES + " ,").str.split(",")
        .list.eval(pl.element().str.strip_chars(_QUOTES + " ")
                   .filter(pl.element().str.len_chars() > 0))
    ).otherwise(pl.lit([], pl.List(pl.String)))
    return out.select(
        pl.concat_str("head", pl.col("rest").fill_null(""), separator=" ")
        .str.replace_all(" {2,}", " ").str.strip_chars_end(" ,;:—–-").str.strip_chars()
        .alias("text"),
        pl.col("aspect_ratio").str.extract(_RATIO, 0).str.replace_all(r"\s+", "")
        .str.replace(r"[/xX]", ":").alias("aspect_ratio"),
        terms.alias("negative"),
        pl.col("camera"),
        number["motion"].alias("motion"),
        number["guidance_scale"].alias("guidance_scale"),
        pl.when(number["fps"].is_between(1, 999)).then(number["fps"]).cast(pl.Int32)
        .alias("fps"),
        pl.when(pl.col("seed").str.contains(r"^\d+$")).then(pl.col("seed")).alias("seed"),
        pl.struct(pl.col("aspect_ratio"), pl.col("negative"),
                  *[pl.col(k) for k in SCALAR_FLAGS[1:]]).alias("flags"),
    )


def flag_frame(queries: pl.Series) -> pl.DataFrame:
    """Parse the flags of normalised queries into the ``queries`` table's flag columns:
    ``text`` (query without flags), aspect_ratio, negative, camera, motion,
    guidance_scale, fps, seed and ``flags`` (every raw value), in the input's order.

    The value of ``-neg`` and ``-camera`` runs to the next flag; numeric flags and ``-ar``
    take one value and give the words after it back to the text. Repeated flags: the
    last value wins, except ``-neg`` whose terms accumulate. Only rows that look like
    they carry a flag are parsed; the others keep their text as it is.
    """
    hint = queries.str.contains(FLAG_HINT).fill_null(False)
    marked = queries.filter(hint)
    for pattern, repl in _MARKERS:
        marked = marked.str.replace_all(pattern, repl)
    parsed = _parse_marked(marked) if len(marked) else None
    plain = pl.DataFrame({"text": queries.filter(~hint)}).with_columns(
        pl.lit(None, pl.String).alias("aspect_ratio"),
        pl.lit([], pl.List(pl.String)).alias("negative"),
        pl.lit(None, pl.String).alias("camera"),
        pl.lit(None, pl.Float64).alias("motion"),
        pl.lit(None, pl.Float64).alias("guidance_scale"),
        pl.lit(None, pl.Int32).alias("fps"),
        pl.lit(None, pl.String).alias("seed"),
        pl.lit(None, FLAGS_STRUCT).alias("flags"),
    )
    if parsed is None:
        return plain.with_columns(pl.col("flags").fill_null(_NO_FLAGS))
    index = pl.Series("_i", range(len(queries)), dtype=pl.Int64)
    return (pl.concat([parsed.with_columns(index.filter(hint)),
                       plain.with_columns(index.filter(~hint))], how="vertical_relaxed")
              .sort("_i").drop("_i")
              .with_columns(pl.col("flags").fill_null(_NO_FLAGS)))


def parse_flags(query: str) -> tuple[str, dict[str, str]]:
    """Text and raw flag values of one normalised query, as the curate stage parses them."""
    row = flag_frame(pl.Series([query], dtype=pl.String)).row(0, named=True)
    return row["text"], {k: v for k, v in row["flags"].items() if v is not None}
