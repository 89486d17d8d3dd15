"""A rendered video's frames for the reward backends: the render stage's decoder, with
errors that name the file, so that one bad video becomes one ``error:unreadable`` row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vpo_core.errors import InputError
from vpo_core.render.video import read_frames as decode_mp4


def read_frames(path: str | Path) -> np.ndarray:
    """All frames of a video as a (T, H, W, 3) uint8 RGB array; InputError naming the file
    when it is missing, unreadable or empty."""
    path = Path(path)
    if not path.is_file():
        raise InputError("video file does not exist", path=str(path))
    try:
        frames = decode_mp4(path)
    except Exception as exc:  # ffmpeg's errors vary by codec and failure: OSError, ...
        raise InputError(f"cannot decode the video: {type(exc).__name__}: {exc}"[:500],
                         path=str(path)) from None
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"expected RGB frames, got an array of shape {frames.shape}",
                         path=str(path))
    return frames


def sample_indices(total: int, n: int) -> list[int]:
    """``n`` frame indices spread evenly from the first to the last frame (all of them
    when the video is shorter)."""
    if total <= n:
        return list(range(total))
    return [round(i * (total - 1) / (n - 1)) for i in range(n)] if n > 1 else [total // 2]
