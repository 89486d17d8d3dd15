"""The ``vlm-checklist`` reward: any vision-capable litellm model (GPT-4o, Claude, a vLLM
server with Qwen2-VL, ...) answers VisionReward's 64 questions about frames of the video.

One request per video: :data:`VLM_FRAMES` frames spread over the video, as JPEG data URLs
in time order, and one text part listing the 64 numbered questions, asking for one
``<number>. yes|no`` line each. Why not 64 requests, one question each, as VisionReward
itself does: the frames are the costly part of the prompt (hundreds of tokens each), so
one request costs about 1/64 of the tokens and of the rate limit. The price is that the
model answers all questions in one pass. Missing or unreadable answers are not guessed:
the row keeps the answers it got, the raw text goes to its metrics, and scoring marks it
``error:unparseable``.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Sequence

import cv2
import numpy as np

from vpo_core.config import LLMConfig
from vpo_core.errors import InputError, StageFailed
from vpo_core.llm.client import LLMClient, LLMRequest
from vpo_core.reward.checklist import (
    N_QUESTIONS,
    Answers,
    VideoToScore,
    parse_answers,
    questions,
)
from vpo_core.reward.frames import read_frames, sample_indices

VLM_FRAMES = 8
FRAME_MAX_SIDE = 512
JPEG_QUALITY = 90
MIN_ANSWER_TOKENS = 640  # 64 lines of "NN. yes", with room for a short preamble

INSTRUCTION = """\
The {n} images are frames sampled evenly from one short AI-generated video, in time order. \
Judge the video and answer every question below with yes or no.

Reply with exactly one line per question, in the form "<number>. yes" or "<number>. no", \
for all {total} questions in order, and nothing else.

Questions:
{questions}"""


def frame_data_urls(frames: np.ndarray, n: int = VLM_FRAMES) -> list[str]:
    """``n`` frames spread over the video as ``data:image/jpeg;base64,...`` URLs, the longer
    side reduced to :data:`FRAME_MAX_SIDE` pixels."""
    urls = []
    for i in sample_indices(len(frames), n):
        frame = frames[i]
        h, w = frame.shape[:2]
        if max(h, w) > FRAME_MAX_SIDE:
            scale = FRAME_MAX_SIDE / max(h, w)
            frame = cv2.resize(frame, (round(w * scale), round(h * scale)),
                               interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ValueError(f"JPEG encoding of frame {i} failed")
        urls.append("data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode())
    return urls


def checklist_messages(text: str, image_urls: Sequence[str]) -> list[dict[str, object]]:
    """One user message: the frames, then the numbered questions about ``text`` (the
    user's query)."""
    listed = "\n".join(f"{i}. {q}" for i, q in enumerate(questions(text), 1))
    text = INSTRUCTION.format(n=len(image_urls), total=N_QUESTIONS, questions=listed)
    parts: list[dict[str, object]] = [{"type": "image_url", "image_url": {"url": url}}
                                      for url in image_urls]
    parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def ask_checklist(videos: Sequence[VideoToScore], llm: LLMConfig, api_key: str | None = None,
                  n_frames: int = VLM_FRAMES) -> dict[str, Answers]:
    """The checklist answers of each video, by id. A video that cannot be read, or whose
    request failed after the client's retries, gets an ``error:<kind>`` status; when every
    request failed (a wrong key, an unreachable server) StageFailed says why."""
    out: dict[str, Answers] = {}
    requests, frames_sent = [], {}
    for video in videos:
        try:
            urls = frame_data_urls(read_frames(video.video_path), n_frames)
        except InputError as exc:
            out[video.id] = Answers(None, "error:unreadable", str(exc))
            continue
        frames_sent[video.id] = len(urls)
        requests.append(LLMRequest(video.id, checklist_messages(video.query, urls),
                                   max_tokens=max(llm.max_tokens, MIN_ANSWER_TOKENS)))
    results = LLMClient(llm, api_key).run(requests)
    if results and not any(r.ok for r in results):
        raise StageFailed(f"vlm-checklist: all {len(results)} requests to {llm.model} failed "
                          f"({dict(Counter(r.status for r in results))}); first error: "
                          f"{results[0].error}")
    for result in results:
        detail = {"model": llm.model, "frames": frames_sent[result.id], "raw": result.text,
                  "prompt_tokens": result.prompt_tokens,
                  "completion_tokens": result.completion_tokens, "cost": result.cost}
        if not result.ok:
            out[result.id] = Answers(None, result.status, result.error, detail)
        else:
            out[result.id] = Answers(parse_answers(result.text), detail=detail)
    return out
