"""The curate stage's four steps in vpo_core (no Prefect): every input row is accounted
for, flags become columns, and a '-neg' term is not a request."""

import json
from pathlib import Path

import polars as pl

from vpo_core.config import CurateConfig, SplitConfig
from vpo_core.curate import stage
from vpo_core.curate.sources import bundled_queries
from vpo_core.tables import read_table


def _run(tmp_path: Path, queries: list, split: SplitConfig) -> dict:
    src = tmp_path / "in.json"
    src.write_text(json.dumps(queries))
    cfg = CurateConfig(split=split)
    ingest = stage.ingest(src, "prompt", tmp_path / "a")
    clean = stage.clean(ingest["raw"], cfg.filters, cfg.near_duplicates, tmp_path / "b")
    label = stage.label(clean["candidates"], cfg.safety, tmp_path / "c")
    out = stage.split(label["labelled"], cfg.split, 0, tmp_path / "d")
    stats = {"ingest": ingest["stats"], "clean": clean["stats"], "label": label["stats"],
             "split": out["stats"]}
    return {"queries": out["queries"], "rejects": clean["rejects"], "stats": stats}


def test_every_row_is_accounted_for(tmp_path: Path) -> None:
    queries = [*bundled_queries()[:400], None, 3, "", "a cat", *bundled_queries()[:50]]
    out = _run(tmp_path, queries, SplitConfig(sft=100, dpo=50, eval=20))
    kept, rejects = read_table(out["queries"]), read_table(out["rejects"])
    rows = sorted(kept["source_row"].to_list() + rejects["source_row"].to_list())
    assert rows == list(range(len(queries)))
    dups = rejects.filter(pl.col("reason") == "duplicate")
    assert dups.height == 50 and dups["duplicate_of"].is_in(kept["query_id"].implode()).all()
    assert kept["query_id"].n_unique() == kept.height
    assert out["stats"]["clean"]["rejected"]["duplicate"] == 50
    assert (kept["split"] != "unused").sum() == 170


def test_flags_and_negative_prompts(tmp_path: Path) -> None:
    queries = ["beach painting at sunset -neg nude, blurry -ar 16:9 -motion 2",
               "a nude statue in a museum hall"]
    out = _run(tmp_path, queries, SplitConfig(sft=2, dpo=0, eval=0))
    first, second = read_table(out["queries"]).sort("source_row").to_dicts()
    assert first["text"] == "beach painting at sunset"
    assert first["query"] == queries[0]                     # the LLM sees the flags
    assert first["negative"] == ["nude", "blurry"]
    assert (first["aspect_ratio"], first["motion"]) == ("16:9", 2.0)
    assert first["safety"] is False                          # "-neg nude" is a constraint
    assert second["safety"] is True and second["safety_source"] == "keyword"


def test_summary_and_sample_rows(tmp_path: Path) -> None:
    out = _run(tmp_path, bundled_queries()[:300], SplitConfig(sft=30, dpo=20, eval=10))
    md = stage.summary_markdown(out["stats"], {"queries": out["queries"],
                                               "rejects": out["rejects"]})
    assert "| sft |" in md and "Self-BLEU-3" in md and str(out["queries"].path) in md
    rows = stage.sample_rows(out["queries"], per_split=2)
    assert sorted(r["split"] for r in rows) == ["dpo", "dpo", "eval", "eval", "sft", "sft"]
