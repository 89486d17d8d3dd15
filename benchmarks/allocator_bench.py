"""Allocator benchmark: a CPU training step of the rehearsal's tiny Llama under glibc's
default allocator beside the settings ``vpo ui up`` gives its workers
(flows.ui.WORKER_MALLOC_ENV).

    python -m benchmarks.allocator_bench [--steps 12] [--batch 16] [--length 512]

A batch's logits (16 x 512 x 4,096 floats = 134 MB) and their gradients are bigger than
glibc's largest mmap threshold (32 MB), so by default each is a fresh mmap, unmapped when
freed and faulted in again, page by page, at the next step. Each setting runs in its own
child process (its environment must be set before the interpreter starts); the step runs
in a worker thread, as a Prefect task does. Printed per setting: seconds per step (after
one warm-up step), minor page faults per step and system CPU seconds per step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from flows.ui import WORKER_MALLOC_ENV


def _child(steps: int, batch: int, length: int, cache: str) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    from vpo_core.models.bundled import TINY_LLAMA, TINY_VOCAB, bundled_model_dir

    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir(cache, TINY_LLAMA))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, TINY_VOCAB, (batch, length), generator=torch.Generator().manual_seed(0))
    out: dict[str, float] = {}

    def train() -> None:
        def step() -> None:
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        step()
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(steps):
            step()
        after = resource.getrusage(resource.RUSAGE_SELF)
        out.update(s_per_step=(time.perf_counter() - started) / steps,
                   faults_per_step=(after.ru_minflt - before.ru_minflt) / steps,
                   sys_s_per_step=(after.ru_stime - before.ru_stime) / steps)

    worker = threading.Thread(target=train)
    worker.start()
    worker.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.steps, args.batch, args.length, args.child)))
        return
    base = {k: v for k, v in os.environ.items() if k not in WORKER_MALLOC_ENV}
    print(f"tiny Llama, batch {args.batch} x {args.length} tokens, {args.steps} timed steps\n")
    print(f"{'allocator':<32}{'s/step':>9}{'faults/step':>13}{'sys s/step':>12}")
    with tempfile.TemporaryDirectory() as cache:
        for name, env in (("glibc default", base),
                          ("vpo ui up's workers", {**base, **WORKER_MALLOC_ENV})):
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.allocator_bench", "--steps", str(args.steps),
                 "--batch", str(args.batch), "--length", str(args.length), "--child", cache],
                env=env, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name:<32}{row['s_per_step']:>9.3f}{row['faults_per_step']:>13,.0f}"
                  f"{row['sys_s_per_step']:>12.3f}")


if __name__ == "__main__":
    main()
