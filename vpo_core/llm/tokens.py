"""What a request costs the tokens-per-minute limiter, before it is sent.

Text counts 4 characters a token. Images follow OpenAI's published rule for vision
input: ``detail: low`` is 85 tokens; otherwise the image is scaled to fit 2048 x 2048,
then its short side to 768, and costs 85 + 170 per 512-pixel tile. The size is read
from the header of a data URL's image; a remote URL (size unknown) counts as the rule's
square case, 765 tokens.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

LOW_DETAIL = 85
PER_TILE = 170
UNKNOWN_SIZE = LOW_DETAIL + 4 * PER_TILE  # 768 x 768 after scaling: 2 x 2 tiles


def image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """OpenAI's token count of one image of ``width`` x ``height`` pixels."""
    if detail == "low":
        return LOW_DETAIL
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return LOW_DETAIL + PER_TILE * math.ceil(width / 512) * math.ceil(height / 512)


def _data_url_size(url: str) -> tuple[int, int] | None:
    if not url.startswith("data:") or "," not in url:
        return None
    try:
        from PIL import Image

        raw = base64.b64decode(url.split(",", 1)[1], validate=False)
        with Image.open(io.BytesIO(raw)) as image:  # reads the header only
            return image.size
    except (binascii.Error, ValueError, OSError):
        return None


def _part_tokens(part: dict[str, Any]) -> int:
    if part.get("type") == "image_url":
        spec = part.get("image_url") or {}
        url = spec if isinstance(spec, str) else spec.get("url", "")
        detail = "auto" if isinstance(spec, str) else spec.get("detail", "auto")
        if detail == "low":
            return LOW_DETAIL
        size = _data_url_size(url)
        return image_tokens(*size, detail) if size else UNKNOWN_SIZE
    return len(str(part.get("text", ""))) // 4


def estimate_tokens(messages: list[dict[str, Any]], max_tokens: int) -> int:
    """Prompt tokens (text and images) plus the answer's budget."""
    total = 0
    for message in messages:
        content = message.get("content") or ""
        if isinstance(content, str):
            total += len(content) // 4
        else:
            total += sum(_part_tokens(p) for p in content)
    return total + max_tokens
