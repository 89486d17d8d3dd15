"""Deterministic SFT / DPO / evaluation splits with a fixed share of safety queries.

Each query's place is a hash of the seed and its id, so the splits depend only on the
seed and the pool: not on input order, and growing one split leaves the others alone
(evaluation is filled first, then SFT, then DPO). No query is in two splits; queries not
chosen are kept with split ``unused``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from vpo_core.config import SplitConfig

SPLITS = ("eval", "sft", "dpo")


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def order_keys(query_ids: pl.Series, seed: int) -> np.ndarray:
    """A seeded pseudo-random rank for each query id (``q`` + 16 hex digits)."""
    ids = query_ids.str.slice(1, 16).str.to_integer(base=16, dtype=pl.UInt64).to_numpy()
    return _splitmix(ids ^ _splitmix(np.array([seed], dtype=np.uint64))[0])


def assign_splits(df: pl.DataFrame, cfg: SplitConfig, seed: int) -> tuple[pl.DataFrame,
                                                                         dict[str, dict]]:
    """Add ``split``; return per split the requested and obtained safety/general counts."""
    key = order_keys(df.get_column("query_id"), seed)
    safety = df.get_column("safety").to_numpy()
    pools = {flag: np.flatnonzero(safety == flag)[np.argsort(key[safety == flag],
                                                             kind="stable")]
             for flag in (True, False)}
    taken = {True: 0, False: 0}
    split = np.full(df.height, "unused", dtype=object)
    report: dict[str, dict] = {}
    for name in SPLITS:
        size = getattr(cfg, name)
        want = {True: round(size * cfg.safety_share)}
        want[False] = size - want[True]
        got = {}
        for flag in (True, False):
            got[flag] = min(want[flag], len(pools[flag]) - taken[flag])
        for flag in (True, False):  # top up a short pool from the other one
            spare = len(pools[flag]) - taken[flag] - got[flag]
            got[flag] += min(spare, size - got[True] - got[False])
        for flag in (True, False):
            rows = pools[flag][taken[flag]:taken[flag] + got[flag]]
            split[rows] = name
            taken[flag] += got[flag]
        report[name] = {"requested": size, "safety": got[True], "general": got[False],
                        "requested_safety": want[True]}
    return df.with_columns(pl.Series("split", split, dtype=pl.String)), report
