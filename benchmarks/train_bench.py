"""Training benchmark: SFT and DPO of the bundled SmolLM2-135M on CPU, with the pipeline's
own trainer (vpo_core.training.trainer.build_trainer), configuration by configuration.

    python -m benchmarks.train_bench [--steps 4] [--batch 4] [--rows R] [--only sft|dpo]
                                     [--max-length 1024] [--json out.json]

SFT full fine-tune beside SFT LoRA (r=16); DPO full (reference = a second model copy)
beside DPO with precompute_ref_log_probs=True (one reference pass over the data before
training with the policy itself, no second copy) and DPO LoRA (reference = the adapter
switched off).

Rows are realistic: bundled user queries in the optimizer instruction, answers of 85-105
words (synthetic detailed video prompts built from the query); DPO rejected = a short lazy
prompt. By default there are steps x batch rows, so the run is exactly one epoch (every
row seen once, as in the paper's 1-epoch DPO) and precompute covers what training uses.

Each configuration runs in a fresh child process (torch threads = cores), so the figures
do not share an interpreter:

* s/step: wall time between the end of optimizer step 1 and the end of the last step,
  divided by steps - 1 (a small callback of this benchmark stamps ``on_step_end``). Step 1
  (lazy allocation of optimizer state, first kernels) is reported apart as "warm-up".
  Each timed step includes collation, forward, backward, optimizer step and logging;
  checkpoint writes are switched off (they are disk time, not training time).
* tokens/s: non-padding tokens the trainer processed in the timed steps, from trl's own
  ``num_tokens`` log (attention-mask sums; for DPO the chosen and the rejected sequence,
  each with its prompt, so the prompt counts twice; reference forwards are not counted).
* setup: building the trainer (model load, tokenisation, the second model copy for DPO
  full, the reference pass for precompute).
* peak RSS: ``ru_maxrss`` of the child at the end (whole run, setup included), and after
  setup (before the first step).
* CPU s/step: process CPU time (all threads) per timed step; less sensitive than wall time
  to other processes on a shared machine, though not immune (spinning OpenMP threads).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.config import TrainDpoConfig, TrainSftConfig
from vpo_core.curate.sources import bundled_queries
from vpo_core.prompts.templates import optimizer_messages
from vpo_core.tables import write_table

CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "sft-full": ("sft", {}),
    "sft-lora-r16": ("sft", {"lora": True, "lora_r": 16}),
    "dpo-full (ref = 2nd copy)": ("dpo", {}),
    "dpo-precompute-ref": ("dpo", {"precompute_ref_log_probs": True}),
    "dpo-lora-r16 (ref = adapter off)": ("dpo", {"lora": True, "lora_r": 16}),
}

SETTINGS = [
    "in a quiet sunlit meadow surrounded by tall grass and scattered wildflowers",
    "on a rain-soaked city street lined with glowing shop windows and neon signs",
    "inside a cozy wooden cabin with a crackling fireplace and soft rugs",
    "along a misty mountain ridge above a sea of slowly drifting clouds",
    "on a wide sandy beach where gentle turquoise waves roll onto the shore",
    "in a vast futuristic hall of glass, steel and softly humming machines",
]
ACTIONS = [
    "The subject moves slowly and naturally, pausing now and then to look around with "
    "curiosity before continuing forward.",
    "Small details come alive: leaves sway, dust drifts through the air and distant "
    "figures pass quietly in the background.",
    "The main subject turns toward the camera, its expression calm and focused, while "
    "the surroundings react subtly to its movement.",
    "A light breeze carries loose petals and sparks across the frame, adding gentle "
    "motion without distracting from the subject.",
]
LIGHTS = [
    "Warm golden-hour light rakes across the scene, casting long soft shadows and a "
    "gentle glow on every surface.",
    "Cool blue twilight mixes with warm practical lights, giving the image deep contrast "
    "and a calm, moody atmosphere.",
    "Bright diffused daylight keeps colors natural and vivid, with crisp highlights and "
    "clean, readable shapes.",
]
CAMERAS = [
    "The camera performs a slow dolly forward at eye level, with shallow depth of field "
    "and a steady, cinematic pace.",
    "A smooth aerial shot glides overhead and gradually descends toward the subject, "
    "revealing the full scale of the place.",
    "A handheld tracking shot follows at a low angle, keeping the subject centered while "
    "the background gently blurs.",
]
STYLES = [
    "Photorealistic, highly detailed textures, 4K quality, natural motion and consistent "
    "lighting throughout the short clip.",
    "Rich film grain, soft color grading and realistic physics keep the few seconds of "
    "video coherent and believable.",
]


def detailed_prompt(query: str, rng: random.Random) -> str:
    """A synthetic detailed video prompt for a query (about 85-105 words)."""
    subject = " ".join(query.split()[:14]).rstrip(".,;:")
    return " ".join([f"A cinematic video of {subject}, {rng.choice(SETTINGS)}.",
                     rng.choice(ACTIONS), rng.choice(LIGHTS), rng.choice(CAMERAS),
                     rng.choice(STYLES)])


def lazy_prompt(query: str) -> str:
    return f"{' '.join(query.split()[:8])}, high quality."


def pick_queries(n: int) -> list[str]:
    pool = [q for q in bundled_queries() if 3 <= len(q.split()) <= 40]
    return random.Random(0).sample(pool, n)


def write_data(folder: Path, rows: int) -> tuple[Path, Path]:
    """sft_examples and dpo_pairs tables of ``rows`` rows each, in the pipeline's schemas."""
    rng = random.Random(0)
    queries = pick_queries(rows)
    answers = [detailed_prompt(q, rng) for q in queries]
    sft = [{"query_id": f"q{i}", "query": q, "shard": 0, "generated": a, "generation": a,
            "critique": None, "judgement": "yes", "refinement": None, "refined": None,
            "generation_status": "ok", "critique_status": "ok", "refine_status": "skipped",
            "final_prompt": a, "status": "ok", "fallback_parse": False, "model": "bench",
            "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0, "calls": 2}
           for i, (q, a) in enumerate(zip(queries, answers, strict=True))]
    dpo = [{"prompt": optimizer_messages(q),
            "chosen": [{"role": "assistant", "content": a}],
            "rejected": [{"role": "assistant", "content": lazy_prompt(q)}],
            "query_id": f"q{i}", "query": q, "source": "text", "chosen_score": None,
            "rejected_score": None}
           for i, (q, a) in enumerate(zip(queries, answers, strict=True))]
    folder.mkdir(parents=True, exist_ok=True)
    sft_path, dpo_path = folder / "sft_examples.parquet", folder / "dpo_pairs.parquet"
    write_table(pl.DataFrame(sft), sft_path, "sft_examples")
    write_table(pl.DataFrame(dpo), dpo_path, "dpo_pairs")
    words = [len(a.split()) for a in answers]
    print(f"data: {rows} rows, answers {min(words)}-{max(words)} words "
          f"(mean {sum(words) / len(words):.0f})")
    return sft_path, dpo_path


# --------------------------------------------------------------------------- child


def _peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _child(spec_file: Path, result_file: Path) -> None:
    """One configuration, in this (fresh) process: build, train, measure."""
    import torch
    from transformers import TrainerCallback

    from vpo_core.training.trainer import TrainSpec, build_trainer

    torch.set_num_threads(os.cpu_count() or 1)
    spec = TrainSpec.load(spec_file)
    load_before = os.getloadavg()[0]

    class Stamps(TrainerCallback):
        """Time at the end of every optimizer step; no checkpoint writes."""

        def __init__(self) -> None:
            self.begin = 0.0
            self.ends: list[float] = []
            self.cpu: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.begin = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self.ends.append(time.perf_counter())
            self.cpu.append(time.process_time())
            control.should_save = False
            return control

    start = time.perf_counter()
    trainer = build_trainer(spec)
    setup = time.perf_counter() - start
    setup_rss = _peak_rss_gb()
    stamps = Stamps()
    trainer.add_callback(stamps)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    ends = stamps.ends
    timed = len(ends) - 1
    step_s = (ends[-1] - ends[0]) / timed if timed else float("nan")
    tokens = logs[-1]["num_tokens"] - logs[0]["num_tokens"] if timed else 0
    per_step = [b - a for a, b in itertools.pairwise(ends)]
    model = trainer.model
    result = {
        "kind": spec.kind, "steps": len(ends), "timed_steps": timed,
        "setup_s": setup, "train_wall_s": wall, "warmup_step_s": ends[0] - stamps.begin,
        "s_per_step": step_s, "cpu_s_per_step": (stamps.cpu[-1] - stamps.cpu[0]) / timed
        if timed else float("nan"), "step_s_min": min(per_step, default=float("nan")),
        "step_s_max": max(per_step, default=float("nan")),
        "tokens_timed": tokens, "tokens_per_s": tokens / (ends[-1] - ends[0]) if timed else 0,
        "tokens_per_step": tokens / timed if timed else 0,
        "peak_rss_gb": _peak_rss_gb(), "setup_peak_rss_gb": setup_rss,
        "final_loss": logs[-1]["loss"], "first_loss": logs[0]["loss"],
        "final_logs": logs[-1],
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "torch_threads": torch.get_num_threads(),
        **({"cuda_peak_gb": torch.cuda.max_memory_allocated() / 1e9}
           if torch.cuda.is_available() else {}),
        "load_before": load_before, "load_after": os.getloadavg()[0],
    }
    result_file.write_text(json.dumps(result, indent=2))


# --------------------------------------------------------------------------- parent


def run_config(name: str, kind: str, extra: dict[str, Any], data: Path, base: str,
               work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from vpo_core.training.trainer import TrainSpec

    cls = TrainSftConfig if kind == "sft" else TrainDpoConfig
    trl = {"per_device_train_batch_size": args.batch, "max_steps": args.steps,
           "save_steps": 10_000}
    cfg = cls(global_batch_size=args.batch,
              trl=trl | {k: v for k, v in extra.items() if k not in cls.model_fields},
              **{k: v for k, v in extra.items() if k in cls.model_fields})
    slug = name.split(" ")[0]
    out = work / slug
    shutil.rmtree(out, ignore_errors=True)
    spec = TrainSpec(kind, base, str(data), str(out), cfg.model_dump(), args.max_length, 0)
    out.mkdir(parents=True)
    spec_file, result_file = work / f"{slug}.spec.json", work / f"{slug}.result.json"
    spec.save(spec_file)
    result_file.unlink(missing_ok=True)
    threads = str(os.cpu_count() or 1)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(work / "hf-datasets")}
    log = work / f"{slug}.log"
    start = time.perf_counter()
    with open(log, "wb") as fh:
        code = subprocess.call([sys.executable, "-m", "benchmarks.train_bench", "--child",
                                str(spec_file), "--result", str(result_file)],
                               stdout=fh, stderr=subprocess.STDOUT, env=env)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    if code != 0 or not result_file.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        print(f"{name}: FAILED (exit {code}); last lines of {log}:\n{tail}")
        return {"name": name, "failed": True, "exit_code": code}
    return {"name": name, "process_s": elapsed, **json.loads(result_file.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (first = warm-up)")
    parser.add_argument("--batch", type=int, default=4, help="examples (pairs) per step")
    parser.add_argument("--rows", type=int, default=None, help="default: steps x batch")
    parser.add_argument("--only", choices=["sft", "dpo"], default=None)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--models-dir", default="vpo-work/models")
    parser.add_argument("--work-dir", default="vpo-work/bench/train_bench")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.result)
        return

    from vpo_core.models.bundled import bundled_model_dir

    if args.steps < 2:
        parser.error("--steps must be at least 2 (step 1 is the untimed warm-up)")
    rows = args.rows or args.steps * args.batch
    work = Path(args.work_dir)
    base = str(bundled_model_dir(args.models_dir))
    sft_data, dpo_data = write_data(work / "data", rows)
    cores = os.cpu_count() or 1
    print(f"== {args.steps} optimizer steps of {args.batch} (step 1 untimed), {rows} rows, "
          f"max length {args.max_length}, CPU fp32, {cores} cores, torch threads {cores}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    results = []
    begin = time.perf_counter()
    for name, (kind, extra) in CONFIGS.items():
        if args.only and kind != args.only:
            continue
        print(f"-- {name} ...", flush=True)
        r = run_config(name, kind, extra, sft_data if kind == "sft" else dpo_data, base, work,
                       args)
        results.append(r)
        if not r.get("failed"):
            print(f"   {r['s_per_step']:.2f} s/step, {r['tokens_per_s']:.0f} tokens/s, "
                  f"{r['peak_rss_gb']:.2f} GB, {r['process_s']:.0f} s in all", flush=True)
    print(f"\n{'configuration':34s}{'s/step':>8s}{'min-max':>12s}{'CPU s':>7s}{'warm-up':>8s}"
          f"{'setup s':>8s}{'tok/step':>9s}{'tokens/s':>9s}{'setup GB':>9s}{'peak GB':>8s}"
          f"{'trainable':>10s}{'loss 1>N':>14s}{'load':>11s}")
    for r in results:
        if r.get("failed"):
            print(f"{r['name']:34s}  failed (exit {r['exit_code']})")
            continue
        print(f"{r['name']:34s}{r['s_per_step']:8.2f}"
              f"{r['step_s_min']:6.1f}-{r['step_s_max']:<5.1f}{r['cpu_s_per_step']:7.1f}"
              f"{r['warmup_step_s']:8.1f}{r['setup_s']:8.1f}{r['tokens_per_step']:9.0f}"
              f"{r['tokens_per_s']:9.0f}{r['setup_peak_rss_gb']:9.2f}{r['peak_rss_gb']:8.2f}"
              f"{r['trainable_params'] / 1e6:9.1f}M {r['first_loss']:6.3f}>{r['final_loss']:<6.3f}"
              f"{r['load_before']:5.2f}>{r['load_after']:<5.2f}")
    print("s/step: wall, steps 2..N; CPU s: process CPU time per timed step (all threads); "
          "load: 1-min load average before > after the configuration")
    print(f"{time.perf_counter() - begin:.0f} s for {len(results)} configurations; "
          f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"(1/5/15 min; {cores} cores)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "steps": args.steps, "batch": args.batch, "rows": rows,
            "max_length": args.max_length, "cores": cores,
            "loadavg_end": os.getloadavg(), "configurations": results}, indent=2))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
