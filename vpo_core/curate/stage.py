"""The curate stage as four steps over files: ingest, clean, label, split.

Each step reads the previous step's Parquet, writes its own (atomically) into a folder
the caller chooses, and returns references plus statistics, so the Prefect tasks around
them stay a few lines and every intermediate table can be inspected.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from vpo_core.config import FilterConfig, NearDuplicateConfig, SafetyConfig, SplitConfig
from vpo_core.curate.bleu import self_bleu
from vpo_core.curate.dedup import near_duplicates, query_ids
from vpo_core.curate.filters import REASONS, apply_rules
from vpo_core.curate.normalize import flag_frame, normalize_series
from vpo_core.curate.safety import label_safety
from vpo_core.curate.sources import read_raw_files
from vpo_core.curate.split import SPLITS, assign_splits
from vpo_core.curate.textstats import Tokens, char_stats, tokenize
from vpo_core.schemas import CANDIDATES
from vpo_core.tables import DataRef, read_table, write_table

SELF_BLEU_SAMPLE = 1000


class Timings(dict):
    """Seconds per named phase of a step."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self[name] = round(time.perf_counter() - start, 3)


def ingest(sources: Path | list[Path], prompt_column: str, out_dir: Path) -> dict[str, Any]:
    """Read every row of the input file(s) (one input, ``source_row`` counting on across
    them) into the ``raw`` table."""
    t = Timings()
    with t.phase("read"):
        raw, files = read_raw_files([sources] if isinstance(sources, Path) else sources,
                                    prompt_column)
    with t.phase("write"):
        ref = write_table(raw, out_dir / "raw.parquet", "raw")
    errors = raw.get_column("read_error").drop_nulls().value_counts()
    return {"raw": ref, "stats": {
        "source": ", ".join(f["file"] for f in files), "files": files, "rows": raw.height,
        "read_errors": dict(zip(errors["read_error"], errors["count"], strict=True)),
        "seconds": t}}


def _rejects(df: pl.DataFrame, reason: pl.Expr, detail: pl.Expr | None = None,
             duplicate_of: pl.Expr | None = None, query: pl.Expr | None = None) -> pl.DataFrame:
    return df.select(
        "source_row", "source_id", "original",
        (query if query is not None else pl.col("query")).alias("query"),
        reason.alias("reason"),
        (detail if detail is not None else pl.lit(None, pl.String)).alias("detail"),
        (duplicate_of if duplicate_of is not None else pl.lit(None, pl.String))
        .alias("duplicate_of"))


def _sample_self_bleu(texts: pl.Series, order: int, seed: int) -> float:
    rows = texts.to_list()
    random.Random(seed).shuffle(rows)
    return round(self_bleu([tokenize(t) for t in rows[:SELF_BLEU_SAMPLE]], order), 4)


def prepare(readable: pl.DataFrame) -> pl.DataFrame:
    """Normalised query, flag columns and the character counts the rules read."""
    query = normalize_series(readable.get_column("original")).alias("query")
    flags = flag_frame(query)
    counts = char_stats(flags.get_column("text")).rename(lambda c: f"t_{c}")
    return pl.concat([readable.drop("read_error", "time").with_columns(query), flags, counts],
                     how="horizontal").with_columns(
        pl.col("query").str.len_chars().alias("q_chars"),
        pl.when(pl.col("t_chars") > 0).then(pl.col("t_chars") - pl.col("t_nonspace") + 1)
        .otherwise(0).cast(pl.Int32).alias("n_words"))


def clean(raw_ref: DataRef, filters: FilterConfig, near: NearDuplicateConfig, out_dir: Path,
          seed: int = 0) -> dict[str, Any]:
    """Normalise, parse flags, apply the rules, remove exact and near duplicates.

    Writes ``candidates`` (kept queries) and ``rejects`` (every other input row with its
    reason) and returns their references with counts, self-BLEU and timings.
    """
    t = Timings()
    with t.phase("read"):
        raw = read_table(raw_ref, "raw").rename({"prompt": "original"})
    n_input = raw.height
    rejects = [_rejects(raw.filter(pl.col("read_error").is_not_null()), pl.col("read_error"),
                        query=pl.lit(None, pl.String))]
    with t.phase("normalise"):
        df = prepare(raw.filter(pl.col("read_error").is_null()))
        del raw
    with t.phase("rules"):
        df, rejected = apply_rules(df, filters, needs_tokens=False)
        rejects.append(_rejects(rejected, pl.col("reason"), pl.col("detail")))
        tok = Tokens.from_texts(df.get_column("text"), near.seed)
        df = pl.concat([df, tok.stats()], how="horizontal").with_row_index("_i")
        df, rejected = apply_rules(df, filters, needs_tokens=True)
        rejects.append(_rejects(rejected, pl.col("reason"), pl.col("detail")))
        tok = tok.take(df.get_column("_i").to_numpy())
        df = df.select(c for c in CANDIDATES.names if c != "query_id")
    with t.phase("exact_duplicates"):
        keys = df.get_column("query").str.to_lowercase()
        first = keys.is_first_distinct()
        df = df.with_columns(query_ids(keys).alias("query_id"))
        rejects.append(_rejects(df.filter(~first), pl.lit("duplicate"),
                                duplicate_of=pl.col("query_id")))
        df = df.filter(first)
        tok = tok.take(np.flatnonzero(first.to_numpy()))
    order = near.bleu_order
    before = _sample_self_bleu(df.get_column("text"), order, seed)
    with t.phase("near_duplicates"):
        near_stats: dict[str, int] = {}
        if near.enabled:
            nd = near_duplicates(tok, near)
            near_stats = nd.stats
            dup = pl.Series(nd.duplicate_of >= 0)
            dups = df.filter(dup).with_columns(
                df.get_column("query_id").gather(nd.duplicate_of[nd.duplicate_of >= 0])
                .alias("_of"), pl.Series("_bleu", nd.bleu[nd.duplicate_of >= 0]))
            rejects.append(_rejects(dups, pl.lit("near_duplicate"),
                                    pl.format("bleu {} against {}", pl.col("_bleu").round(3),
                                              pl.col("_of")), duplicate_of=pl.col("_of")))
            df = df.filter(~dup)
        del tok
    after = _sample_self_bleu(df.get_column("text"), order, seed)
    with t.phase("write"):
        candidates = write_table(df.select(CANDIDATES.names), out_dir / "candidates.parquet",
                                 "candidates")
        del df
        rejects = pl.concat(rejects).sort("source_row")
        rejects_ref = write_table(rejects, out_dir / "rejects.parquet", "rejects")
    counts = rejects.get_column("reason").value_counts()
    return {"candidates": candidates, "rejects": rejects_ref, "stats": {
        "input_rows": n_input,
        "kept": candidates.rows,
        "rejected": dict(zip(counts["reason"], counts["count"], strict=True)),
        "self_bleu": {"before_near_dedup": before, "after": after, "order": order,
                      "sample": SELF_BLEU_SAMPLE},
        "near_duplicates": near_stats,
        "seconds": t}}


def label(candidates_ref: DataRef, cfg: SafetyConfig, out_dir: Path) -> dict[str, Any]:
    """Label safety queries from Detoxify scores and keywords."""
    t = Timings()
    with t.phase("label"):
        df = label_safety(read_table(candidates_ref, "candidates"), cfg)
        ref = write_table(df, out_dir / "labelled.parquet", "labelled")
    sources = df.filter(pl.col("safety")).get_column("safety_source").value_counts()
    return {"labelled": ref, "stats": {
        "safety": int(df.get_column("safety").sum()),
        "by_source": dict(zip(sources["safety_source"], sources["count"], strict=True)),
        "seconds": t}}


def split(labelled_ref: DataRef, cfg: SplitConfig, seed: int, out_dir: Path
          ) -> dict[str, Any]:
    """Assign the SFT / DPO / eval splits and write the ``queries`` table."""
    t = Timings()
    with t.phase("split"):
        df, report = assign_splits(read_table(labelled_ref, "labelled"), cfg, seed)
        ref = write_table(df, out_dir / "queries.parquet", "queries")
    return {"queries": ref, "stats": {"splits": report,
                                      "unused": int((df["split"] == "unused").sum()),
                                      "seconds": t}}


def sample_rows(queries_ref: DataRef, per_split: int = 5) -> list[dict[str, Any]]:
    """A few rows of each split, for the stage's table artifact."""
    df = read_table(queries_ref, "queries")
    rows = (df.filter(pl.col("split").is_in(list(SPLITS)))
              .group_by("split", maintain_order=True).head(per_split)
              .select("split", "query_id", "query", "safety", "safety_source",
                      pl.col("aspect_ratio"), pl.col("negative").list.join(", ")))
    return rows.to_dicts()


def summary_markdown(stats: dict[str, Any], outputs: dict[str, DataRef]) -> str:
    """The stage summary: counts per reason and per split, self-BLEU, timings, files."""
    ing, cln, lab, spl = (stats[k] for k in ("ingest", "clean", "label", "split"))
    lines = ["# Curate", "",
             f"Read **{ing['rows']:,}** rows from `{ing['source']}`; kept "
             f"**{cln['kept']:,}** queries, rejected "
             f"**{sum(cln['rejected'].values()):,}**.", ""]
    if len(ing.get("files", [])) > 1:
        lines += ["Input files (`source_row` counts on across them): " + ", ".join(
            f"`{f['file']}` ({f['rows']:,} rows from {f['first_row']:,})"
            for f in ing["files"]) + ".", ""]
    lines += ["| reason | rows | meaning |", "|---|---:|---|"]
    for reason, n in sorted(cln["rejected"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| `{reason}` | {n:,} | {REASONS.get(reason, '')} |")
    lines += ["", "| split | safety | general | requested |", "|---|---:|---:|---:|"]
    for name, r in spl["splits"].items():
        lines.append(f"| {name} | {r['safety']:,} | {r['general']:,} | {r['requested']:,} "
                     f"({r['requested_safety']:,} safety) |")
    lines.append(f"| unused | | | {spl['unused']:,} |")
    sb = cln["self_bleu"]
    lines += ["", f"Safety queries flagged by the rules: {lab['safety']:,} "
              f"({', '.join(f'{k}: {v:,}' for k, v in lab['by_source'].items()) or 'none'})."]
    if "recheck" in stats:
        rc = stats["recheck"]
        lines.append(f"Judge re-check of {rc['asked']:,} flagged queries: "
                     f"{', '.join(f'{k} {v:,}' for k, v in rc['outcomes'].items()) or 'none'}"
                     f" ({rc['tokens']:,} tokens; {rc['calls_made']:,} calls made, "
                     f"{rc['cached_calls']:,} from the call store; ${rc['cost']:.4f}, of "
                     f"which ${rc['cost_saved']:.4f} saved).")
    lines += [f"Self-BLEU-{sb['order']} (Texygen, {sb['sample']:,}-query sample): "
              f"{sb['before_near_dedup']} before near-duplicate removal, {sb['after']} after "
              "(lower is more diverse).", "", "| step | seconds |", "|---|---:|"]
    for step in ("ingest", "clean", "label", "split"):
        for phase, sec in stats[step]["seconds"].items():
            lines.append(f"| {step}: {phase} | {sec} |")
    lines += ["", "| output | rows | path |", "|---|---:|---|"]
    lines += [f"| {k} | {v.rows:,} | `{v.path}` |" for k, v in outputs.items()]
    return "\n".join(lines) + "\n"

