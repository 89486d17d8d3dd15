"""Serving the optimizer over HTTP (``vpo serve``), and putting it in front of a
text-to-video pipeline with a fallback to the user's query.

The server applies the optimizer instruction itself (:func:`optimizer_messages`, the text
the model was trained on), so a client sends the raw query: to ``POST /v1/optimize``
(one query or a list) or, with any OpenAI client, to ``POST /v1/chat/completions`` (the
last user message is the query). Concurrent requests are batched: a :class:`Batcher`
gathers the queries that arrive within a few milliseconds (and all that arrive while a
batch is generating) into one ``generate`` call, run in a worker thread so the server
keeps answering (``GET /health``) meanwhile. A query's answer does not depend on its batch
(:class:`vpo_core.optimizer.Optimizer`), so it equals ``Optimizer.optimize`` for the same
query and settings.

Bad requests get a 4xx answer with a message in OpenAI's error shape
(``{"error": {"message", "type", "param"}}``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from vpo_core.optimizer import Generation, Optimizer, Sampling, VLLMOptimizer, stable_seed

log = logging.getLogger("vpo_core.serve")


class Engine(Protocol):
    """What the server needs of a model: one prompt per query, batched."""

    name: str

    def generate(self, queries: Sequence[str], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generation]: ...


def load_engine(model: str, engine: str = "auto", device: str = "auto", dtype: str = "auto",
                max_batch: int = 32) -> tuple[Engine, str]:
    """vLLM when it is installed (``auto``) or asked for, transformers otherwise; returns the
    engine and its name."""
    if engine == "vllm" or (engine == "auto" and _has_vllm()):
        return VLLMOptimizer(model, dtype), "vllm"
    return Optimizer(model, batch_size=max_batch, device=device, dtype=dtype), "transformers"


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class ClientError(Exception):
    """A request the server refuses, with its HTTP status and the parameter at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param, self.status = param, status


@dataclass
class _Job:
    query: str
    sampling: Sampling
    future: asyncio.Future


@dataclass
class Batcher:
    """Runs the queries of concurrent requests as few ``generate`` calls: a batch waits up
    to ``wait_ms`` for company (or until ``max_batch`` queries), and what arrives while it
    generates forms the next one. One call runs at a time; queries with other decoding
    settings (temperature, top-p, token budget) go in their own call, while seeds, being
    per row, never split a batch."""

    engine: Engine
    max_batch: int = 32
    wait_ms: float = 10.0
    requests: int = 0
    batches: int = 0
    largest: int = 0
    _queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    async def optimize(self, queries: Sequence[str], sampling: Sampling) -> list[Generation]:
        """The optimized prompt of each query (they may join other requests' batches)."""
        loop = asyncio.get_running_loop()
        jobs = [_Job(q, sampling, loop.create_future()) for q in queries]
        for job in jobs:
            self._queue.put_nowait(job)
        self.requests += 1
        return list(await asyncio.gather(*(j.future for j in jobs)))

    async def run(self) -> None:
        """Forever: take a batch off the queue, generate, answer."""
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.wait_ms / 1000
            while len(batch) < self.max_batch:
                try:
                    if (left := deadline - time.monotonic()) > 0:
                        batch.append(await asyncio.wait_for(self._queue.get(), left))
                    else:
                        batch.append(self._queue.get_nowait())
                except (TimeoutError, asyncio.QueueEmpty):
                    break
            groups: dict[Sampling, list[_Job]] = {}
            for job in batch:   # seeds are per row: only the decoding settings split a batch
                groups.setdefault(replace(job.sampling, seed=0), []).append(job)
            for sampling, jobs in groups.items():
                await self._generate(jobs, sampling)

    async def _generate(self, jobs: list[_Job], sampling: Sampling) -> None:
        queries = [j.query for j in jobs]
        # the seed of Optimizer.optimize's first round: the same answers as there
        seeds = [stable_seed(j.sampling.seed, 0, j.query) for j in jobs]
        self.batches += 1
        self.largest = max(self.largest, len(jobs))
        try:
            done = await asyncio.to_thread(self.engine.generate, queries, sampling, seeds)
        except Exception as exc:  # every request of the batch gets the error
            log.exception("generation failed for a batch of %d queries", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, generation in zip(jobs, done, strict=True):
            if not job.future.done():  # the client may have gone
                job.future.set_result(generation)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_query_chars: int = 2000
    max_queries: int = 64
    max_new_tokens: int = 256
    max_body_bytes: int = 1 << 20


class OptimizeRequest(BaseModel):
    """``POST /v1/optimize``: one query or a list, and optional sampling settings."""

    query: str | None = None
    queries: list[str] | None = None
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1)
    seed: int = 0


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]]


class ChatRequest(BaseModel):
    """The parts of OpenAI's chat completion request the optimizer uses."""

    model: str | None = None
    messages: list[ChatMessage]
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    n: int = 1


def _check_query(query: str, param: str, limits: Limits) -> str:
    if not query.strip():
        raise ClientError(f"{param} is empty: send the user's text-to-video query", param)
    if len(query) > limits.max_query_chars:
        raise ClientError(f"{param} is {len(query):,} characters long; this server accepts "
                          f"at most {limits.max_query_chars:,} (vpo serve --max-query-chars)",
                          param)
    return query


def _sampling(temperature: float, top_p: float, max_new_tokens: int | None, seed: int,
              limits: Limits) -> Sampling:
    tokens = max_new_tokens or limits.max_new_tokens
    if tokens > limits.max_new_tokens:
        raise ClientError(f"at most {limits.max_new_tokens} new tokens per prompt on this "
                          f"server, asked for {tokens}", "max_new_tokens")
    return Sampling(temperature, top_p, tokens, seed)


def _chat_query(messages: list[ChatMessage]) -> str:
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise ClientError("messages has no user message: send the query as one", "messages")
    content = users[-1].content
    if isinstance(content, list):
        content = "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param}},
                        status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return (f"the request body is not valid JSON ({first.get('ctx', {}).get('error')} "
                f"at character {first['loc'][-1]})", None)
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return f"{param or 'body'}: {first.get('msg')}", param


def create_app(engine: Engine, engine_name: str = "transformers", *, max_batch: int = 32,
               wait_ms: float = 10.0, limits: Limits | None = None) -> FastAPI:
    """The HTTP app around one engine (see the module's docstring for the routes)."""
    limits = limits or Limits()
    batcher = Batcher(engine, max_batch, wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="VPO prompt optimizer", lifespan=lifespan)
    app.state.batcher = batcher

    @app.middleware("http")
    async def body_limit(request: Request, call_next: Callable) -> Any:
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > limits.max_body_bytes:
            async for _ in request.stream():  # read and drop it (never held in memory), so
                pass                          # the client gets the answer, not a reset
            return _error(413, f"the request body is {int(size):,} bytes; this server "
                          f"accepts at most {limits.max_body_bytes:,}")
        return await call_next(request)

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, *_validation_message(exc))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"generation failed ({type(exc).__name__}: {exc})")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "engine": engine_name,
                "device": str(getattr(engine, "device", "gpu")),
                "dtype": str(getattr(engine, "dtype", "auto")).removeprefix("torch."),
                "requests": batcher.requests, "batches": batcher.batches,
                "largest_batch": batcher.largest, "queued": batcher._queue.qsize()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.name, "object": "model",
                                            "owned_by": "vpo"}]}

    @app.post("/v1/optimize")
    async def optimize(body: OptimizeRequest) -> dict[str, Any]:
        if (body.query is None) == (body.queries is None):
            raise ClientError("send either query (a string) or queries (a list of strings)",
                              "query")
        queries = [body.query] if body.query is not None else body.queries or []
        if not queries or len(queries) > limits.max_queries:
            raise ClientError(f"queries: send 1 to {limits.max_queries} queries, got "
                              f"{len(queries)}", "queries")
        params = "query" if body.query is not None else "queries[{}]"
        for i, q in enumerate(queries):
            _check_query(q, params.format(i), limits)
        sampling = _sampling(body.temperature, body.top_p, body.max_new_tokens, body.seed,
                             limits)
        done = await batcher.optimize(queries, sampling)
        results = [{"query": q, "prompt": g.text, "truncated": g.truncated}
                   for q, g in zip(queries, done, strict=True)]
        if body.query is not None:
            return {"model": engine.name, **results[0]}
        return {"model": engine.name, "results": results}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> dict[str, Any]:
        if body.n != 1:
            raise ClientError("n: this server returns one optimized prompt per request", "n")
        query = _check_query(_chat_query(body.messages), "messages", limits)
        sampling = _sampling(body.temperature or 0.0, body.top_p or 1.0,
                             body.max_completion_tokens or body.max_tokens, body.seed or 0,
                             limits)
        [g] = await batcher.optimize([query], sampling)
        return {
            "id": f"chatcmpl-vpo-{batcher.requests}", "object": "chat.completion",
            "created": int(time.time()), "model": engine.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                         "finish_reason": "length" if g.truncated else "stop"}],
            "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.tokens,
                      "total_tokens": g.prompt_tokens + g.tokens}}

    return app


# --- in front of a text-to-video pipeline ------------------------------------------------

@dataclass(frozen=True)
class Rewrite:
    """The prompt a video was made from: the optimizer's, or the user's query when the
    optimizer failed (``error`` says why)."""

    query: str
    prompt: str
    optimized: bool
    error: str | None = None


def rewrite(query: str, optimize: Callable[[str], str]) -> Rewrite:
    """``optimize(query)``, or the query itself when that raises or answers nothing, as
    CogVideoX's and Wan2.1's own prompt extenders fall back: a broken optimizer must never
    cost the user their video."""
    try:
        prompt = optimize(query).strip()
    except Exception as exc:  # any failure of the optimizer: fall back to the query
        log.warning("prompt optimizer failed (%s: %s); using the query as it is",
                    type(exc).__name__, exc)
        return Rewrite(query, query, False, f"{type(exc).__name__}: {exc}")
    if not prompt:
        return Rewrite(query, query, False, "the optimizer answered nothing")
    return Rewrite(query, prompt, True)


def http_optimizer(url: str, timeout_s: float = 30.0, **sampling: Any) -> Callable[[str], str]:
    """A client of ``vpo serve`` at ``url`` (``http://host:port``); ``sampling`` adds
    fields of the request (temperature, top_p, max_new_tokens, seed). Raises on an HTTP
    error or a timeout. A prompt cut at the token budget is still used (CogVideoX's text
    encoder reads its first 226 tokens anyway)."""
    def optimize(query: str) -> str:
        body = json.dumps({"query": query, **sampling}).encode()
        request = urllib.request.Request(f"{url.rstrip('/')}/v1/optimize", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return json.loads(answer.read())["prompt"]
    return optimize


def text_to_video(pipe: Any, query: str, optimize: Callable[[str], str], **call: Any
                  ) -> tuple[Any, Rewrite]:
    """Run a diffusers text-to-video pipeline on the optimized prompt of ``query`` (or on
    the query when the optimizer fails); returns the pipeline's output and the
    :class:`Rewrite` it used."""
    used = rewrite(query, optimize)
    return pipe(prompt=used.prompt, **call), used
