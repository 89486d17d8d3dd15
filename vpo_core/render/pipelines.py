"""Loading the text-to-video pipeline: the embedded tiny CogVideoX or any diffusers model.

The tiny CogVideoX has random weights but the real architecture (T5 encoder, 3D
transformer, causal 3D VAE), so the CPU default exercises the same pipeline code, shapes
and frame-count rules as CogVideoX-2b/5b without downloading anything. diffusers and
transformers are imported only when a pipeline is built: that takes seconds, and resuming a
finished shard needs neither.
"""

from __future__ import annotations

from typing import Any

import torch

from vpo_core.config import RenderConfig

TINY_COGVIDEOX = "tiny-cogvideox"
_TINY_TEXT_DIM = 32


def default_device() -> str:
    """CUDA when there is a GPU, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(cfg: RenderConfig, device: str | None = None, *, cpu_offload: bool = False,
                  vae_tiling: bool = False) -> Any:
    """The pipeline ``cfg.pipeline`` names, on ``device`` and checked against the configured
    frame count and size, so a bad config fails before the first video.

    ``cpu_offload`` keeps each model on the CPU until it runs (CogVideoX-5b on a small GPU);
    ``vae_tiling`` decodes in tiles to bound the VAE's memory at 480x720.
    """
    device = device or default_device()
    if cfg.pipeline == TINY_COGVIDEOX:
        pipe = tiny_cogvideox(cfg)
        pipe.to(device)
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(cfg.pipeline, torch_dtype=_dtype(device))
        if vae_tiling and hasattr(pipe.vae, "enable_tiling"):
            pipe.vae.enable_tiling()
        if cpu_offload and device.startswith("cuda"):
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    check_video_size(pipe, cfg)
    return pipe


def tiny_cogvideox(cfg: RenderConfig) -> Any:
    """A randomly initialised CogVideoX small enough for CPU tests, built in code (shapes as
    in diffusers' own pipeline tests, with a byte-level T5 that needs no files). Each part is
    seeded on its own, so the weights are the same every time, whatever the global RNG."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    tokenizer = ByT5Tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=_TINY_TEXT_DIM, d_ff=64, d_kv=8, num_layers=2,
            num_heads=4, relative_attention_num_buckets=8))
        torch.manual_seed(1)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4,
            time_embed_dim=2, text_embed_dim=_TINY_TEXT_DIM, num_layers=2, patch_size=2,
            temporal_compression_ratio=4,
            # Only the precomputed sin-cos position table depends on these: matching the
            # configured size spares recomputing it at every step.
            sample_height=cfg.height // 8, sample_width=cfg.width // 8,
            sample_frames=cfg.num_frames)
        torch.manual_seed(2)
        vae = AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
            latent_channels=4, layers_per_block=1, norm_num_groups=2,
            temporal_compression_ratio=4)
    # CogVideoX-2b's scheduler settings.
    scheduler = CogVideoXDDIMScheduler(
        clip_sample=False, prediction_type="v_prediction", rescale_betas_zero_snr=True,
        timestep_spacing="trailing")
    for model in (text_encoder, transformer, vae):
        model.eval()  # as from_pretrained leaves them: T5's dropout would make videos random
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder,
                             transformer=transformer, vae=vae, scheduler=scheduler)


def check_video_size(pipe: Any, cfg: RenderConfig) -> None:
    """Refuse a frame count or size the pipeline cannot produce exactly (it would silently
    return another number of frames, or fail deep inside the transformer)."""
    frame_step, pixel_step = video_steps(pipe)
    if frame_step and (cfg.num_frames - 1) % frame_step:
        raise ValueError(_size_message("num_frames", cfg.num_frames, frame_step, 1,
                                       cfg.pipeline))
    for name in ("height", "width"):
        value = getattr(cfg, name)
        if pixel_step and value % pixel_step:
            raise ValueError(_size_message(name, value, pixel_step, 0, cfg.pipeline))


def video_steps(pipe: Any) -> tuple[int | None, int | None]:
    """(frame step, pixel step): valid frame counts are ``k * frame step + 1`` and valid
    heights and widths multiples of the pixel step; None where the pipeline does not say.

    CogVideoX's VAE decodes latent frames in pairs, so an even number of latent frames
    comes back as 4 frames too many: its frame step is 4 (temporal compression) x 2.
    """
    temporal = (getattr(pipe, "vae_scale_factor_temporal", None)
                or getattr(pipe, "vae_temporal_compression_ratio", None))
    latent_batch = getattr(getattr(pipe, "vae", None), "num_latent_frames_batch_size", 1)
    spatial = (getattr(pipe, "vae_scale_factor_spatial", None)
               or getattr(pipe, "vae_spatial_compression_ratio", None))
    transformer = getattr(pipe, "transformer", None)
    patch = getattr(getattr(transformer, "config", None), "patch_size", None) or 1
    if isinstance(patch, tuple | list):  # Wan: (t, h, w)
        patch = patch[-1]
    return (temporal * latent_batch if temporal else None,
            spatial * patch if spatial else None)


def _size_message(field: str, value: int, step: int, offset: int, pipeline: str) -> str:
    """Say which values around ``value`` the pipeline accepts (``k * step + offset``)."""
    below = (value - offset) // step * step + offset
    valid = [v for v in (below, below + step) if v >= max(offset, 1)]
    rule = f"{step} * k + 1" if offset else f"a multiple of {step}"
    return (f"render.{field} = {value} is not valid for pipeline {pipeline!r}: it must be "
            f"{rule}; nearest valid values: {' or '.join(map(str, valid))}")


def _dtype(device: str) -> torch.dtype:
    """Half precision on GPUs (bf16 where supported, as CogVideoX-5b wants), fp32 on CPU."""
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
