"""Parquet schemas of every table the pipeline writes: the data contract in one place.

Each stage writes through :func:`vpo_core.tables.write_table`, which casts to the schema
named here and refuses missing columns, extra columns and nulls in required fields.
"""

from __future__ import annotations

import pyarrow as pa

DETOXIFY_COLUMNS = ("toxicity", "obscene", "identity_attack", "insult", "threat",
                    "sexual_explicit")


def _f(name: str, type_: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


# Raw values of the flags a query carries (null when absent).
FLAGS = pa.struct([pa.field(k, pa.string()) for k in (
    "aspect_ratio", "negative", "camera", "motion", "guidance_scale", "seed", "fps")])

# Every input row as read, before any judgement: ingestion never drops a row.
RAW = pa.schema([
    _f("source_row", pa.int64(), False),       # 0-based row (or line) of the input file
    _f("source_id", pa.string()),              # VidProM uuid when the input has one
    _f("prompt", pa.string()),                 # the text as read (best effort when unreadable)
    _f("read_error", pa.string()),             # a READ_REASONS code, or null
    _f("time", pa.string()),
    *[_f(c, pa.float64()) for c in DETOXIFY_COLUMNS],
])

# Normalised query plus the flags users type (-ar, -neg, -camera, -motion, -gs, -seed, -fps).
_QUERY_FIELDS = [
    _f("query_id", pa.string(), False),        # stable: hash of the normalised query
    _f("source_row", pa.int64(), False),
    _f("source_id", pa.string()),
    _f("original", pa.string(), False),        # as the user typed it
    _f("query", pa.string(), False),           # normalised, flags kept: what the LLM sees
    _f("text", pa.string(), False),            # normalised, flags removed
    _f("n_words", pa.int32(), False),
    _f("aspect_ratio", pa.string()),           # "16:9"
    _f("negative", pa.list_(pa.string()), False),  # -neg terms: must NOT appear in the video
    _f("camera", pa.string()),                 # "zoom in", "pan left", ...
    _f("motion", pa.float64()),
    _f("guidance_scale", pa.float64()),
    _f("fps", pa.int32()),
    _f("seed", pa.string()),                   # may exceed int64
    _f("flags", FLAGS, False),                 # every parsed flag's raw value
    *[_f(c, pa.float64()) for c in DETOXIFY_COLUMNS],
]
_SAFETY_FIELDS = [
    _f("safety", pa.bool_(), False),           # True: a safety (unsafe) query
    _f("safety_source", pa.string(), False),   # none / detoxify / keyword / detoxify+keyword,
                                               # "+llm" when the judge confirmed, "llm" when
                                               # it overruled the rules
    _f("safety_detail", pa.string()),          # e.g. "sexual_explicit=0.91" or "keyword: gore"
    _f("safety_check", pa.string()),           # judge re-check: confirmed / overruled /
                                               # refusal / unparseable / error:<kind>; null
                                               # when not re-checked
]

# Queries that passed the rule filter and deduplication.
CANDIDATES = pa.schema(_QUERY_FIELDS)
# ... with their safety label.
LABELLED = pa.schema(_QUERY_FIELDS + _SAFETY_FIELDS)
# The curate stage's output: every kept query and its split (sft / dpo / eval / unused).
QUERIES = pa.schema(_QUERY_FIELDS + _SAFETY_FIELDS + [_f("split", pa.string(), False)])

# Every input row the curate stage did not keep, with the reason.
REJECTS = pa.schema([
    _f("source_row", pa.int64(), False),
    _f("source_id", pa.string()),
    _f("original", pa.string()),
    _f("query", pa.string()),                  # normalised text when it got that far
    _f("reason", pa.string(), False),          # a reason code of vpo_core.curate.reasons
    _f("detail", pa.string()),                 # e.g. "312 words > 200", "bleu 0.83"
    _f("duplicate_of", pa.string()),           # query_id of the kept query it duplicates
])

# One row per SFT query: teacher generation, judge critique, refinement (paper §3.1).
SFT_EXAMPLES = pa.schema([
    _f("query_id", pa.string(), False),
    _f("query", pa.string(), False),
    _f("shard", pa.int32(), False),
    _f("generation", pa.string()),             # the teacher's raw answer
    _f("generated", pa.string()),              # the prompt parsed from it
    _f("generation_status", pa.string(), False),   # ok / refusal / unparseable / error:<kind>
    _f("critique", pa.string()),               # the judge's raw answer
    _f("judgement", pa.string()),              # yes / no
    _f("critique_status", pa.string(), False),     # ... or skipped
    _f("refinement", pa.string()),
    _f("refined", pa.string()),
    _f("refine_status", pa.string(), False),       # ... or skipped (judged yes, refine off)
    _f("final_prompt", pa.string()),           # refined when it parsed, else generated
    _f("status", pa.string(), False),          # ok, or why there is no final prompt
    _f("fallback_parse", pa.bool_(), False),   # a lenient parse was needed somewhere
    _f("model", pa.string(), False),
    _f("prompt_tokens", pa.int64(), False),
    _f("completion_tokens", pa.int64(), False),
    _f("cost", pa.float64(), False),
    _f("calls", pa.int32(), False),
])

TABLES: dict[str, pa.Schema] = {
    "raw": RAW,
    "candidates": CANDIDATES,
    "labelled": LABELLED,
    "queries": QUERIES,
    "rejects": REJECTS,
    "sft_examples": SFT_EXAMPLES,
}
