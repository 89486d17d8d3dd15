"""Serving the optimizer over HTTP (``vpo serve``), and putting it in front of a
text-to-video pipeline with a fallback to the user's query.

The server applies the optimizer instruction itself (:func:`optimizer_messages`, the text
the model was trained on), so a client sends the raw query: to ``POST /v1/optimize``
(one query or a list) or, with any OpenAI client, to ``POST /v1/chat/completions`` (the
last user message is the query). A chat request whose messages already hold an
instruction (a system message, or the optimizer instruction itself, as the served-policy
sample backend sends it) is generated from exactly those messages, as ``vllm serve``
would. Concurrent requests are batched: a :class:`Batcher` gathers the rows that arrive
within a few milliseconds (and all that arrive while a batch is generating) into one
``generate`` call, run in a worker thread so the server keeps answering (``GET /health``)
meanwhile. A row's answer does not depend on its batch
(:class:`vpo_core.optimizer.Optimizer`), so it equals ``Optimizer.optimize`` (or
``Optimizer.sample``, for the sample backend's seeds) for the same query and settings.

Safe behind a load balancer (:class:`Guard`): a bearer token when one is configured
(``/health`` stays open for probes), a bounded queue that answers 429 with Retry-After, a
deadline per request (504), a body limit that also holds for chunked bodies (413), 500s
that name a request id and nothing of the internals (the log has the traceback), and
Prometheus metrics at ``/metrics``. Errors use OpenAI's shape
(``{"error": {"message", "type", "param"}}``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field

from vpo_core.optimizer import Generation, Optimizer, Sampling, VLLMOptimizer, stable_seed
from vpo_core.prompts.templates import OPTIMIZER_INSTRUCTION, optimizer_messages

log = logging.getLogger("vpo_core.serve")
Messages = list[dict[str, Any]]
OPEN_PATHS = frozenset({"/health"})            # load-balancer probes need no token
ROUTES = frozenset({"/health", "/metrics", "/v1/models", "/v1/optimize",
                    "/v1/chat/completions"})
_INSTRUCTION_HEAD, _INSTRUCTION_TAIL = OPTIMIZER_INSTRUCTION.split("{query}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
DRAIN_BYTES = 16 << 20     # of a refused body: read and dropped, never held


class Engine(Protocol):
    """What the server needs of a model: one answer per conversation, batched."""

    name: str

    def generate_chats(self, conversations: Sequence[Messages], sampling: Sampling,
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

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.param, self.status, self.kind, self.headers = param, status, kind, headers


@dataclass
class _Job:
    messages: Messages
    seed: int
    sampling: Sampling
    future: asyncio.Future


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how long and how many may wait."""

    max_query_chars: int = 2000
    max_queries: int = 64
    max_new_tokens: int = 2048        # the largest budget a request may ask for
    default_new_tokens: int = 256     # the budget of a request that names none
    max_body_bytes: int = 1 << 20
    max_prompt_chars: int = 16_000    # a conversation taken as given, all messages
    max_queue: int = 256              # rows admitted (waiting or generating) at once
    request_timeout_s: float = 600.0


@dataclass
class Metrics:
    """Prometheus metrics of one app, in a registry of its own (several apps may live in
    one process: tests)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("vpo_serve_requests", "HTTP requests answered, by route and "
                                "status code", ["route", "status"], registry=r)
        self.latency = Histogram("vpo_serve_request_seconds", "Time from a request's "
                                 "arrival to its answer", ["route"], registry=r,
                                 buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120,
                                          300, 600))
        self.batch_size = Histogram("vpo_serve_batch_size", "Rows per generate call",
                                    registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue_depth = Gauge("vpo_serve_queue_depth", "Rows waiting for a generate call",
                                 registry=r)
        self.in_flight = Gauge("vpo_serve_rows_in_flight", "Rows admitted and not finished "
                               "(waiting or generating); 429 above --max-queue", registry=r)
        self.tokens = Counter("vpo_serve_generated_tokens", "Tokens generated", registry=r)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class Overloaded(Exception):
    """The queue is full: come back after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Batcher:
    """Runs the rows of concurrent requests as few ``generate`` calls: a batch waits up
    to ``wait_ms`` for company (or until ``max_batch`` rows), and what arrives while it
    generates forms the next one. One call runs at a time; rows with other decoding
    settings (temperature, top-p, token budget) go in their own call, while seeds, being
    per row, never split a batch. At most ``max_queue`` rows are admitted at once; a row
    whose client gave up (deadline, disconnect) is dropped before it reaches a batch."""

    engine: Engine
    max_batch: int = 32
    wait_ms: float = 10.0
    max_queue: int = 256
    metrics: Metrics = field(default_factory=Metrics)
    requests: int = 0
    batches: int = 0
    largest: int = 0
    admitted: int = 0
    batch_seconds: float = 1.0        # moving average, for Retry-After
    _queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        self.metrics.queue_depth.set_function(self._queue.qsize)
        self.metrics.in_flight.set_function(lambda: self.admitted)

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on: the batches ahead of a newcomer
        times the recent time per batch."""
        ahead = 1 + self._queue.qsize() // self.max_batch
        return max(1, math.ceil(ahead * self.batch_seconds))

    async def submit(self, rows: Sequence[tuple[Messages, int]], sampling: Sampling,
                     timeout_s: float) -> list[Generation]:
        """The answer of each (messages, seed) row, within ``timeout_s`` (TimeoutError
        otherwise); :class:`Overloaded` when the queue has no room for them."""
        if self.admitted + len(rows) > self.max_queue:
            raise Overloaded(self.retry_after())
        loop = asyncio.get_running_loop()
        jobs = [_Job(m, s, sampling, loop.create_future()) for m, s in rows]
        self.admitted += len(jobs)
        for job in jobs:
            self._queue.put_nowait(job)
        self.requests += 1
        return list(await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)),
                                           timeout_s))

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
            live = [job for job in batch if not job.future.done()]
            self.admitted -= len(batch) - len(live)     # their clients have gone
            groups: dict[Sampling, list[_Job]] = {}
            for job in live:
                groups.setdefault(job.sampling, []).append(job)
            for sampling, jobs in groups.items():
                await self._generate(jobs, sampling)

    async def _generate(self, jobs: list[_Job], sampling: Sampling) -> None:
        self.batches += 1
        self.largest = max(self.largest, len(jobs))
        self.metrics.batch_size.observe(len(jobs))
        start = time.monotonic()
        try:
            done = await asyncio.to_thread(self.engine.generate_chats,
                                           [j.messages for j in jobs], sampling,
                                           [j.seed for j in jobs])
        except Exception as exc:  # every request of the batch gets the error
            log.exception("generation failed for a batch of %d rows", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self.admitted -= len(jobs)
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * (time.monotonic() - start)
        for job, generation in zip(jobs, done, strict=True):
            self.metrics.tokens.inc(generation.tokens)
            if not job.future.done():  # the client may have gone
                job.future.set_result(generation)


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
    """The parts of OpenAI's chat completion request the optimizer uses, plus the two
    loop controls of :class:`Sampling` (vLLM reads ``repetition_penalty`` too)."""

    model: str | None = None
    messages: list[ChatMessage]
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    repetition_penalty: float = Field(1.0, ge=1.0)
    no_repeat_ngram_size: int = Field(0, ge=0)


def _check_query(query: str, param: str, limits: Limits) -> str:
    if not query.strip():
        raise ClientError(f"{param} is empty: send the user's text-to-video query", param)
    if len(query) > limits.max_query_chars:
        raise ClientError(f"{param} is {len(query):,} characters long; this server accepts "
                          f"at most {limits.max_query_chars:,} (vpo serve --max-query-chars)",
                          param)
    return query


def _sampling(temperature: float, top_p: float, max_new_tokens: int | None, limits: Limits,
              param: str, repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0
              ) -> Sampling:
    tokens = max_new_tokens or limits.default_new_tokens
    if tokens > limits.max_new_tokens:
        raise ClientError(f"at most {limits.max_new_tokens} new tokens per prompt on this "
                          f"server (vpo serve --max-new-tokens), asked for {tokens}", param)
    return Sampling(temperature, top_p, tokens, 0, repetition_penalty, no_repeat_ngram_size)


def _text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content


def holds_instruction(messages: Messages) -> bool:
    """Whether chat messages bring their own instruction: a system message, or a user
    message that is the optimizer instruction with a query in it."""
    return any(m["role"] == "system" or (
        m["role"] == "user" and m["content"].startswith(_INSTRUCTION_HEAD)
        and m["content"].endswith(_INSTRUCTION_TAIL)) for m in messages)


def _conversation(body: ChatRequest, limits: Limits) -> tuple[Messages, str | None]:
    """The messages to generate from, and the raw query when the server wrapped it in the
    instruction (None when the messages are taken as given)."""
    messages = [{"role": m.role, "content": _text(m.content)} for m in body.messages]
    if holds_instruction(messages):
        size = sum(len(m["content"]) for m in messages)
        if size > limits.max_prompt_chars:
            raise ClientError(f"messages hold {size:,} characters; this server accepts at "
                              f"most {limits.max_prompt_chars:,} (vpo serve "
                              "--max-prompt-chars)", "messages")
        return messages, None
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise ClientError("messages has no user message: send the query as one", "messages")
    query = _check_query(users[-1]["content"], "messages", limits)
    return optimizer_messages(query), query


def _error(status: int, message: str, param: str | None = None, kind: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param}},
                        status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return (f"the request body is not valid JSON ({first.get('ctx', {}).get('error')} "
                f"at character {first['loc'][-1]})", None)
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return f"{param or 'body'}: {first.get('msg')}", param


ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


class Guard:
    """The ASGI layer in front of the routes: a request id on every answer
    (``X-Request-ID``, the caller's when it is a plain token), the bearer token, the body
    limit, per-route metrics, and a generic 500 for any exception (logged here with its
    traceback and the request id, never sent to the caller).

    The body is read here, chunk by chunk, before any route sees it: keeping stops as soon
    as it passes ``max_body_bytes`` whether or not the client declared a Content-Length
    (a chunked body has none), so nothing larger is ever held in memory."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int,
                 metrics: Metrics) -> None:
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        route = scope["path"] if scope["path"] in ROUTES else "other"
        start, sent = time.perf_counter(), {"status": 500, "started": False}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                sent.update(status=message["status"], started=True)
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            if self.api_key and scope["path"] not in OPEN_PATHS \
                    and not self._authorized(headers.get("authorization", "")):
                await _error(401, "a valid API key is required: send 'Authorization: Bearer "
                             "<key>'", None, "authentication_error",
                             {"WWW-Authenticate": "Bearer"})(scope, receive, send_with_id)
                return
            body = await self._body(receive, headers)
            if body is None:
                await _error(413, f"the request body is larger than this server accepts "
                             f"({self.max_body:,} bytes at most)",
                             headers={"Connection": "close"})(scope, receive, send_with_id)
                return
            await self.app(scope, _replay(body, receive), send_with_id)
        except Exception:
            log.exception("request %s (%s %s) failed", rid, scope.get("method"),
                          scope["path"])
            if sent["started"]:
                raise
            await _error(500, f"internal server error (request id {rid}); the server's log "
                         "has the details")(scope, receive, send_with_id)
        finally:
            self.metrics.requests.labels(route, str(sent["status"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode())  # type: ignore[union-attr]

    async def _body(self, receive: Callable, headers: dict[str, str]) -> bytes | None:
        """The whole body, or None once it passes the limit (what is left of it is then
        read and dropped, up to ``DRAIN_BYTES``, so that a client still sending reads the
        413 instead of a connection reset)."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            await _drain(receive)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_body:
                if more:
                    await _drain(receive)
                return None
            chunks.append(chunk)
            if not more:
                break
        return b"".join(chunks)


async def _drain(receive: Callable) -> None:
    dropped = 0
    while dropped <= DRAIN_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _replay(body: bytes, receive: Callable) -> Callable:
    """A ``receive`` that hands the app the body already read, then the real stream
    (where a disconnect shows)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> dict:
        return pending.pop() if pending else await receive()
    return replay


def create_app(engine: Engine, engine_name: str = "transformers", *, max_batch: int = 32,
               wait_ms: float = 10.0, limits: Limits | None = None,
               api_key: str | None = None, served_name: str | None = None) -> FastAPI:
    """The HTTP app around one engine (see the module's docstring for the routes).
    ``served_name`` is the model's name in requests and answers (``vllm serve
    --served-model-name``; default: the model's path); ``api_key`` turns on the bearer
    token."""
    limits = limits or Limits()
    metrics = Metrics()
    batcher = Batcher(engine, max_batch, wait_ms, limits.max_queue, metrics)
    name = served_name or engine.name
    root = str(Path(engine.name).resolve()) if Path(engine.name).is_dir() else engine.name

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="VPO prompt optimizer", lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes,
                       metrics=metrics)

    async def answer(rows: Sequence[tuple[Messages, int]], sampling: Sampling
                     ) -> list[Generation]:
        try:
            return await batcher.submit(rows, sampling, limits.request_timeout_s)
        except Overloaded as full:
            raise ClientError(f"the server's queue is full ({limits.max_queue} rows, vpo "
                              f"serve --max-queue); retry after {full.retry_after} s", None,
                              429, "rate_limit_error",
                              {"Retry-After": str(full.retry_after)}) from None
        except TimeoutError:
            raise ClientError(f"no answer within {limits.request_timeout_s:g} s (vpo serve "
                              "--request-timeout-s): the server is busy or the token budget "
                              "too large", None, 504, "timeout") from None

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.param, exc.kind, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, *_validation_message(exc))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "engine": engine_name,
                "device": str(getattr(engine, "device", "gpu")),
                "dtype": str(getattr(engine, "dtype", "auto")).removeprefix("torch."),
                "requests": batcher.requests, "batches": batcher.batches,
                "largest_batch": batcher.largest, "queued": batcher._queue.qsize(),
                "in_flight": batcher.admitted}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return metrics.render()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "vpo",
                                            "root": root}]}

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
        sampling = _sampling(body.temperature, body.top_p, body.max_new_tokens, limits,
                             "max_new_tokens")
        # the seed of Optimizer.optimize's first round: the same answers as there
        done = await answer([(optimizer_messages(q), stable_seed(body.seed, 0, q))
                             for q in queries], sampling)
        results = [{"query": q, "prompt": g.text, "truncated": g.truncated}
                   for q, g in zip(queries, done, strict=True)]
        if body.query is not None:
            return {"model": name, **results[0]}
        return {"model": name, "results": results}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> dict[str, Any]:
        if body.stream:
            raise ClientError("stream: this server answers whole completions only", "stream")
        if body.n > limits.max_queries:
            raise ClientError(f"n: at most {limits.max_queries} choices per request", "n")
        messages, query = _conversation(body, limits)
        sampling = _sampling(body.temperature or 0.0, body.top_p or 1.0,
                             body.max_completion_tokens or body.max_tokens, limits,
                             "max_tokens", body.repetition_penalty, body.no_repeat_ngram_size)
        seed = body.seed or 0
        # choice j draws with seed + j: taken as given, exactly that seed (what the sample
        # backend sends per sample); wrapped, as Optimizer.optimize seeds a query's round
        seeds = [seed + j if query is None else stable_seed(seed + j, 0, query)
                 for j in range(body.n)]
        done = await answer([(messages, s) for s in seeds], sampling)
        completion = sum(g.tokens for g in done)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": name,
            "choices": [{"index": j, "message": {"role": "assistant", "content": g.text},
                         "finish_reason": "length" if g.truncated else "stop"}
                        for j, g in enumerate(done)],
            "usage": {"prompt_tokens": done[0].prompt_tokens, "completion_tokens": completion,
                      "total_tokens": done[0].prompt_tokens + completion}}

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


def http_optimizer(url: str, timeout_s: float = 30.0, api_key: str | None = None,
                   **sampling: Any) -> Callable[[str], str]:
    """A client of ``vpo serve`` at ``url`` (``http://host:port``); ``api_key`` for a server
    started with ``--api-key-env``; ``sampling`` adds fields of the request (temperature,
    top_p, max_new_tokens, seed). Raises on an HTTP error or a timeout. A prompt cut at
    the token budget is still used (CogVideoX's text encoder reads its first 226 tokens
    anyway)."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"

    def optimize(query: str) -> str:
        body = json.dumps({"query": query, **sampling}).encode()
        request = urllib.request.Request(f"{url.rstrip('/')}/v1/optimize", body, headers)
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
