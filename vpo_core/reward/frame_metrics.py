"""The embedded reward: weight-free frame metrics, so the pipeline runs offline on a CPU.

Five components, each mapped to [0, 1] (higher is better), combined as a weighted mean:

====================  ======  ==============================================================
component             weight  raw measure → [0, 1]
====================  ======  ==============================================================
temporal_consistency  0.25    mean |frame t − frame t+1 warped back by optical flow| in
                              [0, 1] luma units (flow-compensated, so camera motion is not
                              punished): ``exp(−err / 0.05)``
motion_smoothness     0.25    mean change of the Farneback flow between consecutive frame
                              pairs (acceleration), in % of the frame's longer side:
                              ``exp(−acc / 1.0)``
sharpness             0.20    variance of the Laplacian of the luma (0–255) at native size,
                              mean over frames: ``v / (v + 100)`` (100: a usual blur cut-off)
exposure              0.20    ``(1 − ((mean luma − 0.5) / 0.5)²) · (1 − clipped share)``,
                              clipped = luma ≤ 5 or ≥ 250
colourfulness         0.10    Hasler–Süsstrunk M, mean over frames: ``min(M / 100, 1)``
                              (M ≈ 109 is their "extremely colourful")
====================  ======  ==============================================================

Optical flow and warping run on luma downscaled to at most :data:`ANALYSIS_SIDE` pixels.
A video with fewer than 2 (3) frames has no consistency (smoothness): those components
are reported as null and the weights of the others are renormalised. These are proxies:
a static video is perfectly consistent and smooth, and noise looks sharp, which is why
the weights favour no single component. Scores of videos at different resolutions are
not comparable (the Laplacian depends on scale); pairs compare videos of one query,
rendered alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np

from vpo_core.reward.frames import read_frames

WEIGHTS: dict[str, float] = {
    "temporal_consistency": 0.25,
    "motion_smoothness": 0.25,
    "sharpness": 0.20,
    "exposure": 0.20,
    "colourfulness": 0.10,
}
ANALYSIS_SIDE = 128
WARP_ERROR_SCALE = 0.05
ACCELERATION_SCALE = 1.0
LAPLACIAN_HALF = 100.0
CLIP_LOW, CLIP_HIGH = 5, 250
COLOURFULNESS_FULL = 100.0


@dataclass(frozen=True)
class FrameScore:
    """The combined score and every component and raw measure behind it."""

    score: float
    metrics: dict[str, float | int | None]


def _luma(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def _downscale(luma: np.ndarray) -> np.ndarray:
    h, w = luma.shape[1:]
    factor = ANALYSIS_SIDE / max(h, w)
    if factor >= 1:
        return luma
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in luma])


def optical_flow(luma: np.ndarray) -> list[np.ndarray]:
    """Farneback flow from each frame to the next: (H, W, 2) pixel offsets."""
    return [cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            for a, b in pairwise(luma)]


def warp_error(luma: np.ndarray, flows: list[np.ndarray]) -> float:
    """Mean absolute difference (0–1) between each frame and the next warped onto it."""
    h, w = luma.shape[1:]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    errors = []
    for prev, nxt, flow in zip(luma[:-1], luma[1:], flows, strict=True):
        warped = cv2.remap(nxt, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        errors.append(np.mean(np.abs(warped.astype(np.float32) - prev)) / 255.0)
    return float(np.mean(errors))


def flow_acceleration(flows: list[np.ndarray], side: int) -> float:
    """Mean per-pixel change of the flow between consecutive pairs, in % of ``side``."""
    changes = [np.mean(np.linalg.norm(b - a, axis=-1))
               for a, b in pairwise(flows)]
    return float(np.mean(changes)) * 100.0 / side


def laplacian_variance(luma: np.ndarray) -> float:
    """Variance of the Laplacian, mean over frames (low = blurred)."""
    return float(np.mean([cv2.Laplacian(f, cv2.CV_64F).var() for f in luma]))


def hasler_susstrunk(frames: np.ndarray) -> float:
    """Hasler & Süsstrunk's colourfulness M (2003), mean over frames."""
    values = []
    for frame in frames:
        r, g, b = cv2.split(frame.astype(np.float32))
        mean_rg, std_rg = (float(x[0][0]) for x in cv2.meanStdDev(r - g))
        mean_yb, std_yb = (float(x[0][0]) for x in cv2.meanStdDev(0.5 * (r + g) - b))
        values.append(math.hypot(std_rg, std_yb) + 0.3 * math.hypot(mean_rg, mean_yb))
    return float(np.mean(values))


def frame_metrics(frames: np.ndarray) -> FrameScore:
    """Score (T, H, W, 3) uint8 RGB frames; see the module docstring for the formulas."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {frames.shape}")
    frames = frames.astype(np.uint8, copy=False)
    luma = _luma(frames)
    small = _downscale(luma)
    flows = optical_flow(small) if len(small) > 1 else []
    mean_luma = float(luma.mean()) / 255.0
    clipped = float(np.mean((luma <= CLIP_LOW) | (luma >= CLIP_HIGH)))
    lap = laplacian_variance(luma)
    colour = hasler_susstrunk(frames)
    raw: dict[str, float | None] = {
        "warp_error": warp_error(small, flows) if flows else None,
        "flow_acceleration_pct": (flow_acceleration(flows, max(small.shape[1:]))
                                  if len(flows) > 1 else None),
        "laplacian_variance": lap, "mean_luma": mean_luma, "clipped_share": clipped,
        "hasler_susstrunk": colour,
    }
    components: dict[str, float | None] = {
        "temporal_consistency": None if raw["warp_error"] is None
        else math.exp(-raw["warp_error"] / WARP_ERROR_SCALE),
        "motion_smoothness": None if raw["flow_acceleration_pct"] is None
        else math.exp(-raw["flow_acceleration_pct"] / ACCELERATION_SCALE),
        "sharpness": lap / (lap + LAPLACIAN_HALF),
        "exposure": (1.0 - ((mean_luma - 0.5) / 0.5) ** 2) * (1.0 - clipped),
        "colourfulness": min(colour / COLOURFULNESS_FULL, 1.0),
    }
    present = {k: v for k, v in components.items() if v is not None}
    total = sum(WEIGHTS[k] for k in present)
    score = sum(WEIGHTS[k] * v for k, v in present.items()) / total
    return FrameScore(float(score), {**components, **raw, "frames": len(frames)})


def score_video(path: str | Path) -> FrameScore:
    """Read an MP4 and score its frames."""
    return frame_metrics(read_frames(path))
