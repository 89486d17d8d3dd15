"""One LLM client for every stage that asks a model.

Requests go out as an async batch: at most ``concurrency`` in flight, optional requests-
and tokens-per-minute limits, a timeout per attempt, and retries with exponential
backoff and jitter for transient failures only (429 honouring Retry-After, 5xx,
timeouts, dropped connections, malformed or empty answers). A permanent failure (bad
request, authentication, unknown model) fails its row at once. Every request comes back
as a :class:`LLMResult` row with a status, the model, tokens and cost: nothing is dropped.

Two transports share that machinery (:mod:`vpo_core.llm.transports`): litellm, which
reaches any provider, and a direct HTTP path for OpenAI-compatible servers such as vLLM,
chosen automatically for ``openai/<name>`` with an ``api_base`` because litellm spends
about 5 ms of CPU per call (see benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiolimiter import AsyncLimiter

from vpo_core.config import LLMConfig
from vpo_core.llm.transports import CallError, Completion, make_transport
from vpo_core.progress import Progress

T = TypeVar("T")
MAX_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class LLMRequest:
    """One chat completion to make; ``id`` ties the answer back to its row. A message's
    ``content`` is text, or a list of OpenAI content parts (text and image_url)."""

    id: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass
class LLMResult:
    """The outcome of one request: ``status`` is ``ok`` or ``error:<kind>``."""

    id: str
    status: str
    text: str | None
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    attempts: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Scrubber:
    """Removes secrets from any text the client keeps (errors end up in Parquet)."""

    secrets: list[str] = field(default_factory=list)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(value=asyncio.run(coro)))
    thread.start()
    thread.join()
    return box["value"]


class LLMClient:
    """Batches of chat completions against one configured model."""

    def __init__(self, cfg: LLMConfig, api_key: str | None = None,
                 model_cache: str | None = None) -> None:
        self.cfg = cfg
        self.api_key = api_key
        self.model_cache = model_cache
        self.scrub = Scrubber([api_key] if api_key else [])

    def run(self, requests: Sequence[LLMRequest],
            on_result: Callable[[LLMResult], None] | None = None) -> list[LLMResult]:
        """Answer every request (same order); ``on_result`` is called as each finishes."""
        return run_sync(self.arun(requests, on_result))

    async def arun(self, requests: Sequence[LLMRequest],
                   on_result: Callable[[LLMResult], None] | None = None) -> list[LLMResult]:
        cfg = self.cfg
        gate = asyncio.Semaphore(cfg.concurrency)
        rpm = AsyncLimiter(cfg.requests_per_minute, 60) if cfg.requests_per_minute else None
        tpm = AsyncLimiter(cfg.tokens_per_minute, 60) if cfg.tokens_per_minute else None
        progress = Progress(f"{cfg.model} calls", len(requests))
        async with make_transport(cfg, self.api_key, self.model_cache) as transport:

            async def one(request: LLMRequest) -> LLMResult:
                async with gate:
                    result = await self._with_retries(transport, request, rpm, tpm)
                progress.step()
                if on_result is not None:
                    on_result(result)
                return result

            return list(await asyncio.gather(*(one(r) for r in requests)))

    async def _with_retries(self, transport: Any, request: LLMRequest,
                            rpm: AsyncLimiter | None, tpm: AsyncLimiter | None) -> LLMResult:
        cfg, start = self.cfg, time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            if rpm is not None:
                await rpm.acquire()
            if tpm is not None:
                await tpm.acquire(min(_estimate_tokens(request, cfg), cfg.tokens_per_minute))
            try:  # each transport enforces timeout_s on its attempt
                done: Completion = await transport.complete(request)
            except CallError as err:
                if err.transient and attempt <= cfg.max_retries:
                    await asyncio.sleep(self._delay(attempt, err.retry_after))
                    continue
                return LLMResult(request.id, f"error:{err.kind}", None, cfg.model,
                                 attempts=attempt, seconds=time.perf_counter() - start,
                                 error=self.scrub(str(err))[:500])
            return LLMResult(request.id, "ok", done.text, cfg.model, done.prompt_tokens,
                             done.completion_tokens, done.cost, attempt,
                             time.perf_counter() - start)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Retry-After when the server sends one, else exponential backoff with jitter."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
        base = self.cfg.retry_base_s * 2 ** (attempt - 1)
        return min(base, MAX_RETRY_AFTER) * random.uniform(0.5, 1.5)


def _estimate_tokens(request: LLMRequest, cfg: LLMConfig) -> int:
    """Rough token count of a request (4 characters a token) plus its answer budget."""
    chars = sum(len(m.get("content", "")) for m in request.messages)
    return chars // 4 + (request.max_tokens or cfg.max_tokens)
