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
    _f("generation_status", pa.string(), False),   # ok / cut-off / refusal / unparseable /
                                                   # error:<kind>
    _f("generation_checks", pa.list_(pa.string()), False),  # the generation's failed checks
    _f("critique", pa.string()),               # the judge's raw answer (or, when a hard
                                               # check failed, the checks' own critique)
    _f("judgement", pa.string()),              # yes / no
    _f("critique_status", pa.string(), False),     # ok / check:<codes> (no judge call) /
                                                   # ... or skipped
    _f("refinement", pa.string()),
    _f("refined", pa.string()),
    _f("refine_status", pa.string(), False),       # ... or skipped (judged yes, refine off);
                                                   # check:<codes> when the refined prompt
                                                   # fails a hard check
    _f("final_checks", pa.list_(pa.string()), False),  # the target's flags (soft checks)
    _f("final_prompt", pa.string()),           # the SFT target: generated if judged yes,
                                               # refined if judged no and refined; else null
    _f("status", pa.string(), False),          # ok (a target), or why not: the generation's
    # status, critique-<status>, refine-failed:<status> (incl. check:<codes>),
    # judged-no-unrefined
    _f("error", pa.string()),                  # the first failed call's cause
    _f("fallback_parse", pa.bool_(), False),   # a lenient parse was needed somewhere
    _f("model", pa.string(), False),
    _f("prompt_tokens", pa.int64(), False),
    _f("completion_tokens", pa.int64(), False),
    _f("cost", pa.float64(), False),           # of the row's answers, as first made
    _f("cost_saved", pa.float64(), False),     # the part the call store answered
    _f("calls", pa.int32(), False),
    _f("cached_calls", pa.int32(), False),     # answered from the call store
])

# K prompts per DPO query sampled from the SFT model (paper §3.2).
SAMPLES = pa.schema([
    _f("query_id", pa.string(), False),
    _f("query", pa.string(), False),
    _f("sample_index", pa.int32(), False),     # 0 .. K-1
    _f("prompt", pa.string()),                 # null when generation failed
    _f("status", pa.string(), False),          # ok / empty / truncated / error:<kind>;
                                               # truncated: cut at sample.max_new_tokens
                                               # (prompt kept for inspection, but only ok
                                               # samples are critiqued and rendered)
    _f("model", pa.string(), False),
    _f("safety", pa.bool_(), False),           # a safety query (the checks spare its words)
    _f("seed", pa.int64(), False),             # the query's seed; sample i draws with
                                               # stable_seed(seed, i)
])

# The judge's critique of each sample and the refinement of those judged "No".
CRITIQUES = pa.schema([
    _f("query_id", pa.string(), False),
    _f("query", pa.string(), False),
    _f("sample_index", pa.int32(), False),
    _f("prompt", pa.string()),
    _f("critique", pa.string()),               # the judge's raw answer
    _f("judgement", pa.string()),              # yes / no / null
    _f("critique_status", pa.string(), False), # ok / unparseable / error:<kind> / skipped
    _f("refinement", pa.string()),
    _f("refined", pa.string()),
    _f("refine_status", pa.string(), False),   # ok / multiline / unparseable / skipped / ...
    _f("render", pa.bool_(), False),           # judged yes: goes on to rendering
    _f("check_findings", pa.list_(pa.string()), False),  # the sample's failed checks
    _f("checks_passed", pa.bool_(), False),    # no hard check failed (else a No, no call)
    _f("error", pa.string()),                  # the first failed call's cause
    _f("prompt_tokens", pa.int64(), False),
    _f("completion_tokens", pa.int64(), False),
    _f("cost", pa.float64(), False),           # of the row's answers, as first made
    _f("cost_saved", pa.float64(), False),     # the part the call store answered
    _f("calls", pa.int32(), False),
    _f("cached_calls", pa.int32(), False),     # answered from the call store
])

# Text-level preference pairs: the refined prompt beats the sample it came from.
TEXT_PAIRS = pa.schema([
    _f("query_id", pa.string(), False),
    _f("query", pa.string(), False),
    _f("sample_index", pa.int32(), False),
    _f("chosen", pa.string(), False),          # refined
    _f("rejected", pa.string(), False),        # original sample
])

# One rendered video per prompt that passed the text check.
VIDEOS = pa.schema([
    _f("query_id", pa.string(), False),
    _f("query", pa.string(), False),
    _f("sample_index", pa.int32(), False),
    _f("prompt", pa.string(), False),
    _f("video_path", pa.string()),             # MP4, null when rendering failed
    _f("contact_sheet", pa.string()),          # PNG of a few frames
    _f("status", pa.string(), False),          # ok / error:oom / error:<kind>
    _f("error", pa.string()),
    _f("pipeline", pa.string(), False),
    _f("seed", pa.int64(), False),
    _f("num_frames", pa.int32(), False),
    _f("height", pa.int32(), False),
    _f("width", pa.int32(), False),
    _f("seconds", pa.float64(), False),        # wall time of this video
])

# Reward of each video; checklist backends keep the 64 answers (checklist order).
REWARDS = pa.schema([
    _f("query_id", pa.string(), False),
    _f("query", pa.string(), False),
    _f("sample_index", pa.int32(), False),
    _f("prompt", pa.string(), False),
    _f("video_path", pa.string()),
    _f("backend", pa.string(), False),         # frame-metrics / checklist / vlm-checklist / ...
    _f("score", pa.float64()),                 # VPO's score; null when scoring failed
    _f("visionreward_score", pa.float64()),    # VisionReward's own, checklist backends only
    _f("answers", pa.list_(pa.bool_())),       # 64 yes/no answers, checklist backends only
    _f("metrics", pa.string()),                # JSON of component metrics
    _f("status", pa.string(), False),          # ok / error:<kind> / skipped:<why>
    _f("error", pa.string()),
])

# Every judgement of the evaluate stage (paper Tables 2 and 3).
EVAL_JUDGEMENTS = pa.schema([
    _f("query_id", pa.string(), False),
    _f("query", pa.string(), False),
    _f("method", pa.string(), False),          # original / few-shot / sft / dpo / ...
    _f("round", pa.int32(), False),            # 0: one-shot methods; 1..R: optimizer rounds
    _f("prompt", pa.string()),                 # null when the method gave none
    _f("generation_status", pa.string(), False),  # ok / refusal / unparseable / missing /
                                                  # error:<kind> (the method's own step)
    _f("label", pa.string()),                  # aligned / unsafe / imprecise / refusal
    _f("status", pa.string(), False),          # ok / unparseable / judge_refusal /
                                               # error:<kind> / skipped (no prompt)
    _f("judged_by", pa.string()),              # the judge model, or "local" for empty and
                                               # refusing prompts (no call made)
    _f("judge_answer", pa.string()),           # the judge's raw answer
    _f("fallback", pa.bool_(), False),         # the label needed a lenient parse
    _f("error", pa.string()),                  # the judge call's error, secrets scrubbed
    _f("prompt_tokens", pa.int64(), False),
    _f("completion_tokens", pa.int64(), False),
    _f("cost", pa.float64(), False),
    _f("checks_passed", pa.bool_(), False),    # no hard principle check failed
    _f("check_findings", pa.list_(pa.string()), False),  # every failed check's code
    _f("words", pa.int32(), False),
    _f("coverage", pa.float64()),              # share of the query's content words kept
    _f("distinct_2", pa.float64()),
])

# Chat messages as TRL's conversational format stores them.
MESSAGES = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))

# Preference pairs in TRL's conversational format: load_dataset("parquet", ...) feeds
# DPOTrainer directly (prompt / chosen / rejected), with where each pair came from.
DPO_PAIRS = pa.schema([
    _f("prompt", MESSAGES, False),             # [user: optimizer instruction + query]
    _f("chosen", MESSAGES, False),             # [assistant: preferred prompt]
    _f("rejected", MESSAGES, False),           # [assistant: worse prompt]
    _f("query_id", pa.string(), False),
    _f("query", pa.string(), False),
    _f("source", pa.string(), False),          # text (refined > original) or video (reward)
    _f("chosen_score", pa.float64()),          # reward scores of video pairs
    _f("rejected_score", pa.float64()),
])

# `vpo optimize --input`: every query's optimized prompt after each round.
OPTIMIZED = pa.schema([
    _f("query", pa.string(), False),
    _f("iteration", pa.int32(), False),        # 1 = the first rewrite
    _f("prompt", pa.string(), False),
    _f("model", pa.string(), False),
    _f("temperature", pa.float64(), False),
    _f("top_p", pa.float64(), False),
    _f("seed", pa.int64(), False),
])

TABLES: dict[str, pa.Schema] = {
    "raw": RAW,
    "candidates": CANDIDATES,
    "labelled": LABELLED,
    "queries": QUERIES,
    "rejects": REJECTS,
    "sft_examples": SFT_EXAMPLES,
    "samples": SAMPLES,
    "critiques": CRITIQUES,
    "text_pairs": TEXT_PAIRS,
    "videos": VIDEOS,
    "rewards": REWARDS,
    "dpo_pairs": DPO_PAIRS,
    "optimized": OPTIMIZED,
    "eval_judgements": EVAL_JUDGEMENTS,
}
