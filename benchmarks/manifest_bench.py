"""Checking a model folder: a full re-hash (what every cache check did before manifests)
against the manifest check, on a folder the size of a saved model.

    python -m benchmarks.manifest_bench [--gb 2] [--dir vpo-work/bench/model-2gb]

The folder is written once (random bytes in 512 MB files, like sharded safetensors) and
kept. Each figure is the best of three runs; the OS page cache holds the files after the
first read, which favours the full re-hash (on a cold cache or NFS it reads every byte
from disk again).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from vpo_core.tables import MANIFEST, dir_sha256

CHUNK = 512 << 20


def build(folder: Path, gb: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    total, index = int(gb * (1 << 30)), 0
    while total > 0:
        path = folder / f"model-{index:05d}.safetensors"
        size = min(CHUNK, total)
        if not path.exists() or path.stat().st_size != size:
            with open(path, "wb") as fh:
                fh.write(os.urandom(size))
        total, index = total - size, index + 1


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=Path("vpo-work/bench/model-2gb"))
    args = parser.parse_args()
    build(args.dir, args.gb)
    size = sum(p.stat().st_size for p in args.dir.iterdir()) / (1 << 30)

    def rehash() -> None:
        (args.dir / MANIFEST).unlink(missing_ok=True)
        dir_sha256(args.dir)

    full = best(rehash)
    dir_sha256(args.dir)                                  # the manifest is now written
    check = best(lambda: dir_sha256(args.dir))
    print(f"folder: {args.dir} ({size:.2f} GB, {len(list(args.dir.iterdir())) - 1} files)")
    print(f"full re-hash (before):  {full:8.3f} s")
    print(f"manifest check (after): {check:8.4f} s   ({full / check:,.0f}x faster)")


if __name__ == "__main__":
    main()
