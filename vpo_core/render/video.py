"""Video files: H.264 MP4s and PNG contact sheets written atomically, and MP4s read back.

Writes go to a temp name and are renamed, so an MP4 under its final name is always whole:
the renderer takes an existing, readable MP4 as a finished video when a run resumes.
"""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

from vpo_core.tables import atomic_path


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames as uint8 RGB; floats are taken to be in [0, 1] (diffusers' ``output_type="np"``)."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int) -> Path:
    """Write (T, H, W, 3) frames as an H.264 MP4 (yuv420p, playable everywhere).

    Frames are not rescaled to a 16-pixel macro block: the file keeps the rendered size.
    """
    frames = to_uint8(frames)
    _, height, width, _ = frames.shape
    path = Path(path)
    with atomic_path(path) as tmp:
        # The temp name ends in .tmp: name the container, ffmpeg cannot guess it.
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", quality=8,  # crf 10
            macro_block_size=1, output_params=["-f", "mp4", "-movflags", "+faststart"])
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
    return path


def write_contact_sheet(frames: np.ndarray, path: str | Path, count: int = 4) -> Path:
    """Write ``count`` evenly spaced frames side by side as a PNG: a glance at a video
    without a player (and an image for Prefect artifacts)."""
    frames = to_uint8(frames)
    picks = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int)
    sheet = np.concatenate([frames[i] for i in picks], axis=1)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return path


def read_frames(path: str | Path) -> np.ndarray:
    """Decode an MP4 to a (T, H, W, 3) uint8 array."""
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        width, height = next(reader)["size"]
        frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
    finally:
        reader.close()  # stops ffmpeg when decoding failed half-way
    if not frames:
        raise ValueError(f"{path}: no frames")
    return np.stack(frames)
