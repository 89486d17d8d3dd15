"""GPU check: the project's GPU paths, run on randomly initialised models of the real
architectures, with the figures a user needs to cost the recipe.

    python -m benchmarks.gpu_check [--device cuda|cpu] [--tiny] [--json PATH]
                                   [--only PART ...] [--peak-tflops X] [--budget-s S]

No Prefect, no vLLM, no downloads: every model is built from a configuration written below.
Each part runs in its own child process (peak memory is that part's own, and a part that
fails or runs out of time is reported while the others go on):

* ``mp4``: the embedded tiny CogVideoX renders one video through ``render_rows`` on the
  device, to MP4 and back (the code the CPU tests run).
* ``render``: CogVideoX-2B's architecture (T5-XXL encoder, 30-layer 3D transformer, causal
  3D VAE, the paper's 49 x 480 x 720 at guidance 6) through ``render_rows``: seconds per
  denoising step and the fixed cost per video from two step counts, the VAE decode alone
  (plain and tiled), peak memory; then GPU-hours for N videos at S steps.
* ``prepare``: a Llama-3.2-1B-architecture model (1.24B parameters, vocabulary 128,256),
  a word-level tokenizer trained in code with a Llama-3-style chat template, and
  ``sft_examples`` / ``dpo_pairs`` tables whose rows are exactly the sequence length
  (the paper's ``policy.max_length`` 2048) long.
* ``sft``, ``dpo``: training steps through ``vpo_core.training.launch.run_training`` with
  the paper preset's batch (8 examples, 2 pairs), bf16 and gradient checkpointing;
  ``zero3``: the SFT step under DeepSpeed ZeRO-3, one process, through the same launcher.
  Step times and tokens come from the trainer's own ``progress.jsonl`` (one line per
  optimizer step, stamped with the time and the rank's peak memory); step 1 is warm-up
  and untimed. MFU = 6 x parameters x tokens/s / the device's dense bf16 peak.

``--device cpu --tiny`` runs every part with tiny sizes (fp32, ZeRO-3 over gloo) in about
a minute; the full sizes need a GPU (about 60 GB at the peak).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PARTS = ("prepare", "sft", "dpo", "zero3", "render", "mp4")
# Child processes and their parts, in the order they run; ``prepare`` runs in the parent.
GROUPS = {"video": ("mp4", "render"), "train": ("sft", "dpo"), "zero3": ("zero3",)}
TRAINING = ("sft", "dpo", "zero3")

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' datasheets, matched
# in this order against the device name; --peak-tflops overrides.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 125.0), ("L4", 121.0),
)

# Llama-3.2-1B: 16 layers of 2048, grouped-query attention (32 heads, 8 KV), Llama-3's
# 128,256-token vocabulary, tied embeddings.
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                rms_norm_eps=1e-5, tie_word_embeddings=True)
LLAMA_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  vocab_size=1024, max_position_embeddings=4096, rope_theta=500000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=True)

# THUDM/CogVideoX-2b: transformer/config.json (30 layers, 30 heads of 64, no RoPE, text
# 226 tokens of 4096), the VAE's config (scaling factor 1.15258426), and its text encoder,
# google/t5-v1_1-xxl's encoder (4.76B parameters).
COGVIDEOX_2B = dict(
    transformer=dict(num_attention_heads=30, attention_head_dim=64, in_channels=16,
                     out_channels=16, time_embed_dim=512, text_embed_dim=4096, num_layers=30,
                     patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
                     use_rotary_positional_embeddings=False),
    vae=dict(block_out_channels=(128, 256, 256, 512), latent_channels=16, layers_per_block=3,
             norm_num_groups=32, temporal_compression_ratio=4, scaling_factor=1.15258426),
    t5=dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
            relative_attention_max_distance=128),
)
COGVIDEOX_TINY = dict(
    transformer=dict(num_attention_heads=4, attention_head_dim=8, in_channels=4,
                     out_channels=4, time_embed_dim=16, text_embed_dim=32, num_layers=2,
                     patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
                     use_rotary_positional_embeddings=False),
    vae=dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
             norm_num_groups=2, temporal_compression_ratio=4, scaling_factor=1.15258426),
    t5=dict(vocab_size=384, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
            relative_attention_max_distance=128),
)


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the full check and the tiny one."""

    name: str
    llama: dict[str, Any]
    seq_len: int            # tokens per training sequence (paper: policy.max_length 2048)
    sft_batch: int          # paper preset: per_device_batch_size 8 (SFT), 2 (DPO)
    dpo_batch: int
    train_steps: int        # optimizer steps; the first is warm-up
    gradient_checkpointing: bool
    cogvideox: dict[str, Any]
    video: tuple[int, int, int]     # frames, height, width (paper: 49 x 480 x 720)
    render_steps: int               # denoising steps of the timed video
    budget_s: int                   # wall-time budget for all parts
    group_caps_s: dict[str, int] = field(default_factory=dict)  # per child process


FULL = Sizes("full", LLAMA_1B, 2048, 8, 2, 6, True, COGVIDEOX_2B, (49, 480, 720), 6, 480,
             {"video": 210, "train": 210, "zero3": 180})
# Tiny: the first ZeRO-3 run on a CPU machine compiles DeepSpeed's shared-memory op (cached
# in ~/.cache/torch_extensions): minutes on a busy 2-core machine.
TINY = Sizes("tiny", LLAMA_TINY, 192, 2, 2, 3, False, COGVIDEOX_TINY, (9, 64, 64), 4, 900,
             {"video": 300, "train": 300, "zero3": 600})

# The paper's render (§4.1): ~30k videos, 50 DDIM steps; and cheaper settings beside it.
PROJECTIONS = ((30_000, 50), (30_000, 25), (30_000, 10))
RENDER_PROMPT = (
    "A ginger cat naps on a sunny terracotta roof in a quiet Mediterranean village. The camera "
    "performs a slow dolly forward at eye level with shallow depth of field, while warm "
    "golden-hour light rakes across the tiles and swallows circle in the pale blue sky. "
    "Photorealistic, highly detailed textures, natural motion, consistent lighting.")


# --------------------------------------------------------------------------- figures


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s, or None for a device not in the table."""
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def training_figures(logs: list[dict[str, Any]], params: int, peak: float | None,
                     started: float, wall_s: float) -> dict[str, Any]:
    """Step time, throughput, memory and MFU from a run's progress lines (one per optimizer
    step, stamped with ``time``). Step 1 is warm-up: timed steps are 2..N."""
    steps = [line for line in logs if "loss" in line]
    if len(steps) < 2:
        raise ValueError(f"need at least 2 logged steps to time one, got {len(steps)}")
    timed = len(steps) - 1
    step_s = (steps[-1]["time"] - steps[0]["time"]) / timed
    tokens_per_step = (steps[-1]["num_tokens"] - steps[0]["num_tokens"]) / timed
    tokens_per_s = tokens_per_step / step_s
    gpu = [line["gpu_peak_gb"] for line in steps if "gpu_peak_gb" in line]
    return {
        "steps": len(steps), "timed_steps": timed, "step_s": step_s,
        "tokens_per_step": tokens_per_step, "tokens_per_s": tokens_per_s,
        "setup_and_first_step_s": steps[0]["time"] - started,
        "after_training_s": started + wall_s - steps[-1]["time"],  # save model + report
        "train_wall_s": wall_s, "params": params,
        "peak_memory_gb": max(gpu) if gpu else max(line["rss_peak_gb"] for line in steps),
        "memory_kind": "gpu (torch max_memory_allocated)" if gpu else "host RSS",
        "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
        "mfu": mfu(params, tokens_per_s, peak),
    }


def mfu(params: int, tokens_per_s: float, peak: float | None, flops_per_param: int = 6
        ) -> float | None:
    """Model FLOPs utilisation: ``flops_per_param`` x parameters x tokens/s over the peak."""
    return flops_per_param * params * tokens_per_s / (peak * 1e12) if peak else None


def gpu_hours(videos: int, steps: int, step_s: float, fixed_s: float) -> float:
    """GPU-hours to render ``videos`` at ``steps`` denoising steps, one video at a time."""
    return videos * (fixed_s + steps * step_s) / 3600


# --------------------------------------------------------------------------- parts


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> dict[str, float]:
    """This process's peak so far: torch's GPU allocation (since the last reset) on a GPU,
    and the host RSS (never reset)."""
    import torch

    out = {"rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        out["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def environment() -> dict[str, Any]:
    """The machine and the versions that produced the figures."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    cuda = torch.cuda.is_available()
    versions = {}
    for name in ("torch", "transformers", "trl", "accelerate", "deepspeed", "peft", "datasets",
                 "diffusers", "polars", "pyarrow", "imageio-ffmpeg", "tokenizers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "device": "cuda" if cuda else "cpu",
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "gpu_memory_gb": torch.cuda.get_device_properties(0).total_memory / 1e9 if cuda
        else None,
        "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],  # CPU figures on a shared machine depend on it
        "python": platform.python_version(), "versions": versions,
    }


def _fresh(folder: Path) -> Path:
    """An empty folder: the renderer reuses finished MP4s, the trainer resumes checkpoints
    and appends progress lines, and a check must redo everything."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def part_mp4(work: Path) -> dict[str, Any]:
    """The embedded tiny pipeline renders one video on the device; the MP4 is read back."""
    import numpy as np

    from vpo_core.config import RenderConfig
    from vpo_core.render.pipelines import load_pipeline
    from vpo_core.render.renderer import render_one, render_rows
    from vpo_core.render.video import read_frames

    cfg = RenderConfig()  # the embedded default: tiny-cogvideox, 9 frames of 64 x 64
    pipe = load_pipeline(cfg, device=_device())
    row = {"query_id": "mp4", "query": "a cat", "sample_index": 0, "prompt": RENDER_PROMPT}
    started = time.perf_counter()
    videos = render_rows([row], cfg, _fresh(work / "mp4"), seed=0, pipe=pipe)
    seconds = time.perf_counter() - started
    video = videos.row(0, named=True)
    if video["status"] != "ok":
        raise RuntimeError(f"render failed: {video['status']}: {video['error']}")
    back = read_frames(video["video_path"])
    rendered = render_one(pipe, row["prompt"], cfg, video["seed"])  # the same seed again
    return {"device": str(pipe.device), "seconds": seconds, "shape": list(back.shape),
            "shape_ok": back.shape == rendered.shape,
            "mean_abs_diff_vs_rerender": float(np.abs(back.astype(np.int16)
                                                      - rendered.astype(np.int16)).mean()),
            "mp4_bytes": Path(video["video_path"]).stat().st_size,
            "contact_sheet": Path(video["contact_sheet"]).is_file(), **_peak_gb()}


def build_cogvideox(components: dict[str, Any], video: tuple[int, int, int], device: str
                    ) -> Any:
    """A CogVideoX pipeline with random weights of the given configurations, in the dtype
    the renderer loads real pipelines in (bf16 on a GPU, fp32 on CPU). The tokenizer is
    byte-level T5 (no files); padded to 226 tokens, the encoder does the same work as with
    T5's own tokenizer."""
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    from vpo_core.render.pipelines import _dtype

    frames, height, width = video
    torch.manual_seed(0)
    with torch.device(device):  # random init where the model runs: seconds, not minutes
        text_encoder = T5EncoderModel(T5Config(**components["t5"]))
        transformer = CogVideoXTransformer3DModel(
            **components["transformer"], sample_frames=frames, sample_height=height // 8,
            sample_width=width // 8)
        vae = AutoencoderKLCogVideoX(**components["vae"])
    # CogVideoX-2b's scheduler_config.json.
    scheduler = CogVideoXDDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
        set_alpha_to_one=True, snr_shift_scale=3.0, timestep_spacing="trailing")
    pipe = CogVideoXPipeline(tokenizer=ByT5Tokenizer(), text_encoder=text_encoder,
                             transformer=transformer, vae=vae, scheduler=scheduler)
    for model in (text_encoder, transformer, vae):
        model.eval()
    pipe.to(device, _dtype(device))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def part_render(sizes: Sizes, work: Path) -> dict[str, Any]:
    """One warm-up video, then one timed video through ``render_rows``: seconds per
    denoising step from the start of one transformer call to the next (hooks on the
    transformer, synchronised), the rest of the video's time as its fixed cost; then the
    VAE decode alone, plain and tiled; peak memory of each."""
    import torch

    from vpo_core.config import RenderConfig
    from vpo_core.render.renderer import render_rows

    device = _device()
    started = time.perf_counter()
    pipe = build_cogvideox(sizes.cogvideox, sizes.video, device)
    build_s = time.perf_counter() - started
    frames, height, width = sizes.video
    out = _fresh(work / "render")
    starts: list[float] = []

    def stamp(*_: Any) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        starts.append(time.perf_counter())

    def render(tag: str, steps: int) -> float:
        cfg = RenderConfig(pipeline=f"cogvideox-2b-architecture-{sizes.name}-random",
                           num_frames=frames, height=height, width=width,
                           num_inference_steps=steps, guidance_scale=6.0, fps=8)
        row = {"query_id": tag, "query": "a cat on a roof", "sample_index": 0,
               "prompt": RENDER_PROMPT}
        starts.clear()
        video = render_rows([row], cfg, out, seed=0, pipe=pipe).row(0, named=True)
        if video["status"] != "ok":
            raise RuntimeError(f"render of {tag} failed: {video['status']}: {video['error']}")
        return video["seconds"]

    hook = pipe.transformer.register_forward_pre_hook(stamp)
    warmup_s = render("warmup", 2)  # first kernels, cuDNN autotuning: untimed
    _reset_peak()
    steps = sizes.render_steps
    video_s = render("timed", steps)
    video_peak = _peak_gb()
    hook.remove()
    if len(starts) != steps:
        raise RuntimeError(f"expected {steps} transformer calls (one per step), saw {len(starts)}")
    step_s = (starts[-1] - starts[0]) / (len(starts) - 1)
    fixed_s = video_s - steps * step_s  # text encoder, VAE decode, frames, sheet, MP4

    # The VAE decode alone, on latents of the video's shape, plain and tiled.
    latent_frames = (frames - 1) // pipe.vae_scale_factor_temporal + 1
    latents = torch.randn(1, latent_frames, pipe.vae.config.latent_channels, height // 8,
                          width // 8, device=device, dtype=pipe.vae.dtype)
    decode = {}
    for tiled in (False, True):
        (pipe.vae.enable_tiling if tiled else pipe.vae.disable_tiling)()
        _reset_peak()
        begin = time.perf_counter()
        with torch.no_grad():
            pipe.decode_latents(latents)
        if device == "cuda":
            torch.cuda.synchronize()
        decode["tiled" if tiled else "plain"] = {"seconds": time.perf_counter() - begin,
                                                 **_peak_gb()}
    pipe.vae.disable_tiling()
    return {
        "video": {"frames": frames, "height": height, "width": width, "guidance_scale": 6.0,
                  "latent_tokens": latent_frames * (height // 16) * (width // 16)},
        "params": {"transformer": _params(pipe.transformer),
                   "text_encoder": _params(pipe.text_encoder), "vae": _params(pipe.vae)},
        "dtype": str(pipe.transformer.dtype), "build_s": build_s, "warmup_video_s": warmup_s,
        "steps": steps, "video_s": video_s, "step_s": step_s, "fixed_s_per_video": fixed_s,
        "peak_memory": video_peak, "vae_decode": decode,
    }


# ----- training


def _tokenizer(texts: list[str], max_length: int) -> Any:
    """A word-level tokenizer trained on the benchmark's own texts, with Llama-3's special
    tokens and a Llama-3-style chat template: one token per word, so row lengths in tokens
    are exact. The model's vocabulary (128,256) is larger; the extra rows cost what they
    cost in the real model (the output layer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
               "<|end_header_id|>", "<|eot_id|>", "<|pad|>", "<unk>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator([*texts, "system user assistant"],
                            trainers.WordLevelTrainer(special_tokens=special))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|pad|>", unk_token="<unk>", model_max_length=max_length)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|> {{ m['role'] }} "
        "<|end_header_id|> {{ m['content'] }} <|eot_id|> {% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|> assistant <|end_header_id|> "
        "{% endif %}")
    return tokenizer


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(800)}" for _ in range(n))


def part_prepare(sizes: Sizes, work: Path, bf16: bool) -> dict[str, Any]:
    """The random Llama (saved in bf16 for a GPU, as hub checkpoints are), its tokenizer
    and training tables whose rows are exactly ``seq_len`` tokens (prompt + answer; DPO:
    prompt + chosen and prompt + rejected)."""
    import polars as pl
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.utils import logging as hf_logging

    from vpo_core.prompts.templates import optimizer_messages
    from vpo_core.tables import write_table

    hf_logging.disable_progress_bar()
    rng = random.Random(0)
    sft_rows = sizes.sft_batch * sizes.train_steps   # one epoch of exactly the timed steps
    dpo_rows = sizes.dpo_batch * sizes.train_steps
    queries = [_words(rng, sizes.seq_len // 4) for _ in range(max(sft_rows, dpo_rows))]
    corpus = [optimizer_messages(q)[0]["content"] for q in queries[:1]] + [_words(rng, 2000)]
    tokenizer = _tokenizer(corpus, sizes.seq_len)

    def tokens(messages: list[dict[str, str]], **kwargs: Any) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                 **kwargs)["input_ids"])

    def prompt_len(query: str) -> int:
        return tokens(optimizer_messages(query), add_generation_prompt=True)

    def answer(query: str) -> str:  # + 1 for <|eot_id|>: prompt + answer = seq_len tokens
        return _words(rng, sizes.seq_len - prompt_len(query) - 1)

    sft = [{"query_id": f"q{i}", "query": q, "shard": 0, "generated": a, "generation": a,
            "critique": None, "judgement": "yes", "refinement": None, "refined": None,
            "generation_status": "ok", "critique_status": "ok", "refine_status": "skipped",
            "final_prompt": a, "status": "ok", "fallback_parse": False, "model": "gpu-check",
            "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0, "calls": 2,
            "generation_checks": [], "final_checks": [], "error": None, "cost_saved": 0.0,
            "cached_calls": 0}
           for i, q in enumerate(queries[:sft_rows]) for a in [answer(q)]]
    dpo = [{"prompt": optimizer_messages(q),
            "chosen": [{"role": "assistant", "content": answer(q)}],
            "rejected": [{"role": "assistant", "content": answer(q)}],
            "query_id": f"q{i}", "query": q, "source": "text", "chosen_score": None,
            "rejected_score": None}
           for i, q in enumerate(queries[:dpo_rows])]
    write_table(pl.DataFrame(sft), work / "sft_examples.parquet", "sft_examples")
    write_table(pl.DataFrame(dpo), work / "dpo_pairs.parquet", "dpo_pairs")
    full = tokens([*optimizer_messages(queries[0]),
                   {"role": "assistant", "content": sft[0]["final_prompt"]}])

    config = LlamaConfig(**sizes.llama, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, model {config.vocab_size}")
    torch.manual_seed(0)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    params = _params(model)
    if bf16:
        model.to(torch.bfloat16)
    model_dir = _fresh(work / "llama")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return {"model_dir": str(model_dir), "params": params, "tokens_per_sequence": full,
            "tokenizer_size": len(tokenizer), "sft_rows": sft_rows, "dpo_pairs": dpo_rows,
            "build_and_save_s": time.perf_counter() - started}


def part_training(kind: str, sizes: Sizes, work: Path, peak: float | None) -> dict[str, Any]:
    """Train ``sizes.train_steps`` steps through the project's launcher and read the
    figures back from its progress lines."""
    from vpo_core.config import TrainDpoConfig, TrainSftConfig
    from vpo_core.training.launch import run_training
    from vpo_core.training.trainer import PROGRESS, TrainSpec

    prepared = json.loads((work / "prepare.json").read_text())
    sft = kind in ("sft", "zero3")
    batch = sizes.sft_batch if sft else sizes.dpo_batch
    cfg = (TrainSftConfig if sft else TrainDpoConfig)(
        trl={"learning_rate": 2e-6 if sft else 5e-7, "per_device_train_batch_size": batch,
             "max_steps": sizes.train_steps, "save_steps": 10**6,
             "gradient_checkpointing": sizes.gradient_checkpointing},
        global_batch_size=batch, bf16=True, num_processes=1,
        zero_stage=3 if kind == "zero3" else 0)
    out = _fresh(work / f"train-{kind}")
    data = work / ("sft_examples.parquet" if sft else "dpo_pairs.parquet")
    spec = TrainSpec("sft" if sft else "dpo", prepared["model_dir"], str(data), str(out),
                     cfg.model_dump(), sizes.seq_len, 0)
    started = time.time()
    metrics = run_training(spec)
    wall = time.time() - started
    logs = [json.loads(line) for line in (out / PROGRESS).read_text().splitlines()]
    figures = training_figures(logs, prepared["params"], peak, started, wall)
    if kind == "dpo":  # the reference model's forward adds 2 x params per token
        figures["mfu_with_reference"] = mfu(prepared["params"], figures["tokens_per_s"], peak,
                                            flops_per_param=8)
    figures.update(precision="bf16" if _device() == "cuda" else "fp32 (bf16 on GPUs only)",
                   batch=batch, seq_len=sizes.seq_len, zero_stage=cfg.zero_stage,
                   gradient_checkpointing=cfg.trl["gradient_checkpointing"],
                   metrics_steps=metrics.get("steps"))
    return figures


def run_group(group: str, sizes: Sizes, work: Path, peak_override: float | None,
              result: Path) -> None:
    """The parts of one child process, one after the other; each part's figures (or why
    there are none) are written as soon as it ends, so a later crash keeps them."""
    import gc
    import traceback

    import torch

    env = environment()
    peak = peak_tflops(env["device_name"], peak_override) \
        if env["device"] == "cuda" or peak_override else None
    results: dict[str, Any] = {"environment": env, "peak_tflops": peak}
    for part in GROUPS[group]:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _reset_peak()
        before = torch.cuda.memory_allocated() / 1e9 if torch.cuda.is_available() else None
        started = time.perf_counter()
        try:
            if part == "mp4":
                figures = part_mp4(work)
            elif part == "render":
                figures = part_render(sizes, work)
            else:
                figures = part_training(part, sizes, work, peak)
            results[part] = {"status": "ok", **figures}
        except Exception as exc:  # one failing part must not lose the others' figures
            reason = ("out of memory: " if isinstance(exc, torch.OutOfMemoryError) else "") \
                + f"{type(exc).__name__}: {exc}"
            results[part] = {"status": "failed", "reason": reason[:2000],
                             "traceback": traceback.format_exc().splitlines()[-15:]}
        results[part].update(elapsed_s=time.perf_counter() - started,
                             gpu_allocated_before_gb=before)
        result.write_text(json.dumps(results, indent=2))


# --------------------------------------------------------------------------- parent


def _run_group(group: str, args: argparse.Namespace, work: Path, timeout: float
               ) -> dict[str, Any]:
    """One group of parts in a child process; each part's figures, or why there are none."""
    result, log = work / f"{group}.json", work / f"{group}.log"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", group, "--result",
           str(result), "--work-dir", str(work)] + (["--tiny"] if args.tiny else [])
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TQDM_DISABLE": "1", "HF_DATASETS_CACHE": str(work / "hf-datasets")}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    started = time.perf_counter()
    with open(log, "wb") as fh:  # own process group: a timeout ends the launcher's ranks too
        child = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
        try:
            code: int | str = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            code = "timeout"
    elapsed = time.perf_counter() - started
    results = json.loads(result.read_text()) if result.exists() else {}
    results["process_s"] = elapsed
    why = f"ran past {timeout:.0f} s" if code == "timeout" else f"the process exited {code}"
    tail = log.read_text(errors="replace").splitlines()[-20:] if code != 0 else []
    for part in GROUPS[group]:
        if part not in results:  # never finished: the process died or ran out of time
            results[part] = {"status": "failed", "reason": why, "log": str(log),
                             "log_tail": tail}
    return results


def _fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def summarise(report: dict[str, Any]) -> list[str]:
    """The printed table."""
    parts, lines = report["parts"], []
    env = report.get("environment") or {}
    torch_version = env.get("versions", {}).get("torch")
    lines.append(f"device: {env.get('device_name', '?')} | torch {torch_version}"
                 f" | CUDA {env.get('cuda')} | sizes: {report['sizes']} | peak bf16: "
                 f"{_fmt(report['peak_tflops'], '.0f', ' TFLOP/s')}")
    prep = parts.get("prepare", {})
    if prep.get("status") == "ok":
        lines.append(f"policy: Llama architecture, {prep['params']:,} parameters, "
                     f"{prep['tokens_per_sequence']} tokens per sequence")
    lines.append(f"{'training':26s}{'step s':>9s}{'tokens/step':>12s}{'tokens/s':>10s}"
                 f"{'MFU':>7s}{'peak GB':>9s}  memory")
    for part, label in (("sft", "SFT {}"), ("dpo", "DPO {} (ref = 2nd copy)"),
                        ("zero3", "SFT {} ZeRO-3, 1 proc")):
        r = parts.get(part, {})
        label = label.format(r.get("precision", "")[:4])
        if r.get("status") != "ok":
            lines.append(f"{label:26s}{_status(r)}")
            continue
        lines.append(f"{label:26s}{r['step_s']:9.3f}{r['tokens_per_step']:12.0f}"
                     f"{r['tokens_per_s']:10.0f}{_fmt(r['mfu'], '.1%'):>7s}"
                     f"{r['peak_memory_gb']:9.2f}  {r['memory_kind']}")
    sft, z3 = parts.get("sft", {}), parts.get("zero3", {})
    if sft.get("status") == z3.get("status") == "ok":
        lines.append(f"ZeRO-3 vs plain: step time x{z3['step_s'] / sft['step_s']:.2f}, "
                     f"peak memory x{z3['peak_memory_gb'] / sft['peak_memory_gb']:.2f}")
    r = parts.get("render", {})
    if r.get("status") == "ok":
        v, dec = r["video"], r["vae_decode"]
        mem = r["peak_memory"]
        lines.append(f"render: CogVideoX-2B architecture, {v['frames']} x {v['height']} x "
                     f"{v['width']}, guidance {v['guidance_scale']}, {r['dtype']}: "
                     f"{r['step_s']:.3f} s/step, {r['fixed_s_per_video']:.2f} s fixed per video, "
                     f"peak {mem.get('gpu_peak_gb', mem['rss_peak_gb']):.1f} GB "
                     + ("(GPU)" if "gpu_peak_gb" in mem else "(host RSS)"))
        lines.append(f"  VAE decode alone: {dec['plain']['seconds']:.2f} s plain, "
                     f"{dec['tiled']['seconds']:.2f} s tiled; peak "
                     f"{dec['plain'].get('gpu_peak_gb', dec['plain']['rss_peak_gb']):.1f} / "
                     f"{dec['tiled'].get('gpu_peak_gb', dec['tiled']['rss_peak_gb']):.1f} GB")
        if mem.get("gpu_peak_gb", 0) > 80:
            lines.append("  above 80 GB: an 80 GB GPU needs the renderer's vae_tiling or "
                         "cpu_offload")
        for p in report["projections"]:
            lines.append(f"  GPU-hours for {p['videos']:,} videos at {p['steps']} steps: "
                         f"{p['gpu_hours']:,.1f} ({p['video_s']:.1f} s per video)")
    else:
        lines.append(f"render: {_status(r)}")
    m = parts.get("mp4", {})
    lines.append(f"mp4 round trip (tiny pipeline on {m.get('device', '?')}): " + (
        f"shape {m['shape']}, same as rendered: {m['shape_ok']}, mean |diff| "
        f"{m['mean_abs_diff_vs_rerender']:.2f}/255, {m['seconds']:.2f} s"
        if m.get("status") == "ok" else _status(m)))
    lines.append("elapsed per part: " + ", ".join(
        f"{p} {parts[p]['elapsed_s']:.0f} s" for p in PARTS if "elapsed_s" in parts.get(p, {}))
        + f"; total {report['elapsed_s']:.0f} s")
    lines.append("child processes (imports included): " + ", ".join(
        f"{g} {c['process_s']:.0f} s" for g, c in report["processes"].items()
        if c.get("process_s")))
    return lines


def _status(result: dict[str, Any]) -> str:
    if not result:
        return "not run"
    return f"{result['status']}: {result.get('reason', '')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when there is a GPU")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU: about a minute)")
    parser.add_argument("--only", nargs="+", choices=list(GROUPS), help="run only these "
                        "groups of parts (video: mp4 + render, train: sft + dpo, zero3)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak")
    parser.add_argument("--budget-s", type=float, help="wall-time budget for all parts")
    parser.add_argument("--work-dir", type=Path, default=Path("vpo-work/bench/gpu_check"))
    parser.add_argument("--child", choices=list(GROUPS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = TINY if args.tiny else FULL
    work = args.work_dir.resolve()
    if args.child:
        run_group(args.child, sizes, work, args.peak_tflops, args.result)
        return

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here; use --device cpu --tiny")
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu needs --tiny: the full sizes need a GPU (~60 GB)")
    work.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or sizes.budget_s
    groups = [g for g in GROUPS if not args.only or g in args.only]
    print(f"gpu_check: {sizes.name} sizes on {args.device}, {', '.join(groups)}, budget "
          f"{budget:.0f} s, work dir {work}", flush=True)
    began = time.perf_counter()
    parts: dict[str, dict[str, Any]] = {}
    children: dict[str, dict[str, Any]] = {}
    for group in groups:
        if group in ("train", "zero3") and "prepare" not in parts:
            parts["prepare"] = _prepare(sizes, args.device, work)
            _print_part("prepare", parts["prepare"])
        left = budget - (time.perf_counter() - began)
        if left < 15:
            results = {p: {"status": "skipped", "reason": f"time budget of {budget:.0f} s "
                           "spent"} for p in GROUPS[group]}
        elif group != "video" and parts["prepare"]["status"] != "ok":
            results = {p: {"status": "skipped", "reason": "prepare failed"}
                       for p in GROUPS[group]}
        else:
            results = _run_group(group, args, work, min(sizes.group_caps_s[group], left))
        for part in GROUPS[group]:
            parts[part] = results.pop(part)
            _print_part(part, parts[part])
        children[group] = results
    report = _report(args, sizes, parts, children, time.perf_counter() - began)
    print("\n".join(summarise(report)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"figures written to {args.json}")


def _prepare(sizes: Sizes, device: str, work: Path) -> dict[str, Any]:
    """The training inputs, in this process (on the CPU: no GPU memory held here)."""
    started = time.perf_counter()
    try:
        figures = {"status": "ok", **part_prepare(sizes, work, bf16=device == "cuda")}
        (work / "prepare.json").write_text(json.dumps(figures, indent=2))
    except Exception as exc:
        figures = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    return {**figures, "elapsed_s": time.perf_counter() - started}


def _print_part(part: str, r: dict[str, Any]) -> None:
    print(f"  {part}: {r['status']}" + (f" in {r['elapsed_s']:.1f} s" if "elapsed_s" in r else "")
          + (f" ({r['reason']})" if "reason" in r else ""), flush=True)
    for line in [*r.get("traceback", []), *r.get("log_tail", [])][-10:]:
        print(f"    | {line}")


def _report(args: argparse.Namespace, sizes: Sizes, parts: dict[str, dict[str, Any]],
            children: dict[str, dict[str, Any]], elapsed: float) -> dict[str, Any]:
    env = next((c["environment"] for c in children.values() if "environment" in c), {})
    peak = next((c["peak_tflops"] for c in children.values() if "peak_tflops" in c), None)
    render = parts.get("render", {})
    projections = []
    if render.get("status") == "ok":
        for videos, steps in PROJECTIONS:
            video_s = render["fixed_s_per_video"] + steps * render["step_s"]
            projections.append({"videos": videos, "steps": steps, "video_s": video_s,
                                "gpu_hours": gpu_hours(videos, steps, render["step_s"],
                                                       render["fixed_s_per_video"])})
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sizes": sizes.name, "device": args.device, "environment": env, "peak_tflops": peak,
        "settings": asdict(sizes), "elapsed_s": elapsed, "parts": parts,
        "processes": {g: {"process_s": c.get("process_s")} for g, c in children.items()},
        "projections": projections,
    }


if __name__ == "__main__":
    main()
