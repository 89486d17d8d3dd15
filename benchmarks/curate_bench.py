"""Curation benchmark: the curate stage at VidProM scale, and our self-BLEU filter beside
the plain O(n^2) reference on a subset.

    python -m benchmarks.curate_bench                  # 1.67M rows + 5,000-query subset
    python -m benchmarks.curate_bench --rows 200000 --subset 2000

Part 1 builds the deterministic VidProM-scale corpus (benchmarks/corpus.py), then runs
the four steps of the curate stage (the functions the Prefect tasks call) in a child
process and prints wall time, rows per second and the child's peak memory.

Part 2 takes the first ``--subset`` queries of the corpus that pass the rules and exact
deduplication (the near-duplicate filter's real input) and runs, in the same process,
the plain greedy filter (each query against every earlier kept query, pure Python) and
ours (MinHash-LSH candidates + exact BLEU); it prints both times, the speed ratio and
how often the two make the same keep/drop decision.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.corpus import VIDPROM_ROWS, corpus_file
from vpo_core.config import CurateConfig
from vpo_core.curate import stage
from vpo_core.curate.dedup import near_duplicates, reference_near_duplicates
from vpo_core.curate.filters import apply_rules
from vpo_core.curate.sources import read_raw
from vpo_core.curate.textstats import Tokens, tokenize

WORK = Path("vpo-work") / "bench"


def run_stage(corpus: Path, out: Path) -> dict:
    """The curate stage's four steps, timed (runs in the child process)."""
    cfg = CurateConfig()
    start = time.perf_counter()
    ingest = stage.ingest(corpus, "prompt", out)
    clean = stage.clean(ingest["raw"], cfg.filters, cfg.near_duplicates, out)
    label = stage.label(clean["candidates"], cfg.safety, out)
    split = stage.split(label["labelled"], cfg.split, 0, out)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "rows": ingest["stats"]["rows"], "kept": split["queries"].rows,
            "clean": clean["stats"], "label": label["stats"],
            "steps": {k: sum(v["stats"]["seconds"].values()) for k, v in
                      (("ingest", ingest), ("clean", clean), ("label", label),
                       ("split", split))}}


def part1(corpus: Path) -> None:
    with tempfile.TemporaryDirectory(dir=WORK) as out:
        child = subprocess.run([sys.executable, "-m", "benchmarks.curate_bench", "--child",
                                str(corpus), out], capture_output=True, text=True, check=True)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    r = json.loads(child.stdout.splitlines()[-1])
    c = r["clean"]
    print(f"\n== curate stage on {r['rows']:,} rows (2 cores target: <= 60 s, <= 4 GB)")
    print(f"wall time        {r['wall_s']:8.1f} s")
    print(f"rows per second  {r['rows'] / r['wall_s']:8,.0f}")
    print(f"peak memory      {peak_gb:8.2f} GB (child process max RSS)")
    print(f"kept queries     {r['kept']:8,}")
    print("per step (s)     " + ", ".join(f"{k} {v:.1f}" for k, v in r["steps"].items()))
    print("clean phases (s) " + ", ".join(f"{k} {v:.1f}" for k, v in c["seconds"].items()))
    print("rejected         " + ", ".join(f"{k} {v:,}" for k, v in
                                         sorted(c["rejected"].items(), key=lambda kv: -kv[1])))
    print(f"near-dup search  {c['near_duplicates']}")
    print(f"self-BLEU-3 (1,000-query sample) before near-dedup "
          f"{c['self_bleu']['before_near_dedup']}, after {c['self_bleu']['after']}")


def subset_tokens(corpus: Path, n: int) -> list[str]:
    """The first n queries that pass the rules and exact deduplication."""
    cfg = CurateConfig()
    raw = read_raw(corpus).head(n * 3).rename({"prompt": "original"})
    df = stage.prepare(raw.filter(pl.col("read_error").is_null()))
    df, _ = apply_rules(df, cfg.filters, needs_tokens=False)
    df = pl.concat([df, Tokens.from_texts(df["text"]).stats()], how="horizontal")
    df, _ = apply_rules(df, cfg.filters, needs_tokens=True)
    df = df.filter(df["query"].str.to_lowercase().is_first_distinct())
    return df["text"].head(n).to_list()


def part2(corpus: Path, n: int) -> None:
    cfg = CurateConfig().near_duplicates
    texts = subset_tokens(corpus, n)
    start = time.perf_counter()
    ours = near_duplicates(Tokens.from_texts(pl.Series(texts)), cfg)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    ref = reference_near_duplicates([tokenize(t) for t in texts], cfg.bleu_order, cfg.threshold)
    t_ref = time.perf_counter() - start
    same = float(np.mean(ours.kept == ref.kept))
    both = np.sum(ours.kept & ref.kept)
    jaccard = both / np.sum(ours.kept | ref.kept)
    print(f"\n== self-BLEU filter on {len(texts):,} queries (BLEU-{cfg.bleu_order} > "
          f"{cfg.threshold}); target agreement >= 95%")
    print(f"{'':22s}{'seconds':>10s}{'kept':>8s}{'comparisons':>14s}")
    print(f"{'plain reference':22s}{t_ref:10.2f}{int(ref.kept.sum()):8d}"
          f"{ref.stats['comparisons']:14,}")
    print(f"{'ours (LSH + BLEU)':22s}{t_ours:10.2f}{int(ours.kept.sum()):8d}"
          f"{ours.stats['bleu_pairs']:14,}")
    print(f"speed ratio {t_ref / t_ours:,.0f}x; same keep/drop decision for {same:.2%} of "
          f"queries; kept-set Jaccard {jaccard:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=VIDPROM_ROWS)
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--skip-stage", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_stage(Path(args.child[0]), Path(args.child[1])), default=str))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    corpus = corpus_file(WORK, args.rows)
    print(f"corpus: {corpus} ({time.perf_counter() - start:.0f} s to build or load)")
    if not args.skip_stage:
        part1(corpus)
    if args.subset:
        part2(corpus, args.subset)


if __name__ == "__main__":
    main()
