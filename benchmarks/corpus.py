"""A deterministic VidProM-scale corpus built from the bundled real queries.

VidProM has 1.67M prompts with its columns (uuid, prompt, time and six Detoxify
scores). This builds the same shape from the 5,000 bundled queries:

- new queries recombine real clauses (the head of one query with clauses of others),
  so vocabulary, lengths, flags and HTML entities stay realistic;
- about a third are edits of an earlier prompt, as users resubmit with small changes
  (a modifier added or removed, a typo, other flags, case, whitespace, a prefix);
- a few per cent are resubmitted verbatim or differ only in case and spacing;
- about 2% are bad rows: nulls, blanks, URLs, character runs, non-Latin script,
  digits, and a few pasted 100 KB documents;
- Detoxify scores are low except for queries with unsafe words (and some noise).

The same seed gives the same corpus, byte for byte.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from vpo_core.curate.sources import bundled_queries
from vpo_core.schemas import DETOXIFY_COLUMNS

VIDPROM_ROWS = 1_672_243
_MODIFIERS = ["4k", "cinematic", "hd", "realistic", "8k", "high quality", "ultra detailed",
              "slow motion", "anime style", "photorealistic", "trending on artstation"]
_PREFIXES = ["a video of ", "cinematic shot of ", "animation of ", "create a video: ", ""]
_FLAGS = ["-ar 16:9", "-ar 9:16", "-motion 2", "-motion 4", "-gs 20", "-fps 24",
          "-camera zoom in", "-camera pan left", "-neg blurry, distorted, low quality",
          "--ar 16:9", "-seed 42"]
_NON_LATIN = ["Черный кот едет по ночному городу", "человек бежит по пустыне в шторм",
              "一只猫在草地上奔跑，电影感", "夜の東京の街を歩く女性", "고양이가 바다에서 수영한다",
              "رجل يمشي في الصحراء عند الغروب", "गधा बोझ के साथ सड़क पर चल रहा है"]
_UNSAFE = ("naked", "nude", "blood", "gore", "kill", "sexy", "gun", "dead", "war", "fight")


def _edit(rng: random.Random, prompt: str) -> str:
    """A small user edit of an earlier prompt."""
    words = prompt.split()
    kind = rng.randrange(7)
    if kind == 0:
        return f"{prompt}, {rng.choice(_MODIFIERS)}"
    if kind == 1 and "," in prompt:
        return prompt.rsplit(",", 1)[0]
    if kind == 2 and words:
        i = rng.randrange(len(words))
        w = words[i]
        if len(w) > 3:
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        return " ".join(words)
    if kind == 3:
        return f"{prompt} {rng.choice(_FLAGS)}"
    if kind == 4:
        return rng.choice(_PREFIXES) + prompt
    if kind == 5 and len(words) > 4:
        del words[rng.randrange(len(words))]
        return " ".join(words)
    return prompt.replace(" ", "  ", 1).capitalize()


def _bad(rng: random.Random) -> str | None:
    """A row the curate stage must reject (and record)."""
    kind = rng.randrange(7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice(["", "   "])
    if kind == 2:
        return f"https://discord.com/channels/{rng.randrange(10**12)} a cat dancing"
    if kind == 3:
        return rng.choice("!?*#.") * rng.randrange(8, 40)
    if kind == 4:
        return rng.choice(_NON_LATIN)
    if kind == 5:
        return str(rng.randrange(10**9))
    return "lorem ipsum dolor sit amet " * 4000 if rng.random() < 0.05 else "a dog " * 150


def build_corpus(rows: int = VIDPROM_ROWS, seed: int = 0) -> pl.DataFrame:
    """Rows of VidProM's columns, deterministic for ``seed``."""
    rng = random.Random(seed)
    real = bundled_queries()
    clauses = [c.strip() for q in real for c in q.split(",")[1:] if len(c.split()) >= 2]
    prompts: list[str | None] = []
    made: list[str] = []
    for _ in range(rows):
        roll = rng.random()
        if roll < 0.02:
            prompts.append(_bad(rng))
            continue
        if made and roll < 0.06:
            p = rng.choice(made)
            p = p.upper() if rng.random() < 0.3 else f" {p}  "
        elif made and roll < 0.40:
            p = _edit(rng, made[rng.randrange(max(0, len(made) - 50_000), len(made))])
        else:
            head = rng.choice(real).split(",")[0]
            tail = rng.sample(clauses, rng.randrange(0, 4))
            p = ", ".join([head, *tail])
            if rng.random() < 0.15:
                p = f"{p} {rng.choice(_FLAGS)}"
            if rng.random() < 0.1:
                p = p.replace("'", "&#39;")
        made.append(p)
        prompts.append(p)
    start = datetime(2023, 7, 1)
    scores = {c: [] for c in DETOXIFY_COLUMNS}
    for p in prompts:
        unsafe = p is not None and any(w in p.lower() for w in _UNSAFE) and rng.random() < 0.6
        hot = rng.choice(DETOXIFY_COLUMNS) if unsafe or rng.random() < 0.01 else None
        for c in DETOXIFY_COLUMNS:
            scores[c].append(round(rng.uniform(0.55, 0.99) if c == hot else
                                   rng.random() ** 6 * 0.3, 5))
    return pl.DataFrame({
        "uuid": [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in prompts],
        "prompt": prompts,
        "time": [(start + timedelta(seconds=7 * i)).isoformat() for i in range(len(prompts))],
        **scores,
    })


def corpus_file(folder: Path, rows: int = VIDPROM_ROWS, seed: int = 0) -> Path:
    """Build the corpus once and keep it as Parquet in ``folder``."""
    path = folder / f"vidprom-synthetic-{rows}-{seed}.parquet"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        build_corpus(rows, seed).write_parquet(path)
    return path
