"""One LLM client for every stage that asks a model.

Calls run on the process's LLM engine (:mod:`vpo_core.llm.engine`), so every client of
the process shares one concurrency gate and one requests/tokens-per-minute limiter per
(model, api_base). Each call first looks in the call store (:mod:`vpo_core.llm.store`):
a stored answer costs no request, no slot and no rate budget. Otherwise it is sent (or
collected into a Batch API job, :mod:`vpo_core.llm.batch`) with a timeout per attempt and
retries with capped exponential backoff and jitter for transient failures only (429
honouring Retry-After, 5xx, timeouts, dropped connections, malformed or empty answers);
a call waiting out a backoff holds no slot. A permanent failure (bad request,
authentication, unknown model) fails its row at once. Every request comes back as an
:class:`LLMResult` with a status, the model, tokens and cost: nothing is dropped.

Two ways to call: :meth:`LLMClient.run` answers a list of requests; :meth:`LLMClient.
run_chains` runs a chain of dependent calls per item (generate -> critique -> refine)
with no barrier between items: a slow call holds back only its own row. When calls
queue for a slot, earlier steps go first (see :class:`~vpo_core.llm.engine.PriorityGate`).

Two transports share that machinery (:mod:`vpo_core.llm.transports`): litellm, which
reaches any provider, and a direct HTTP path for OpenAI-compatible servers such as vLLM,
chosen automatically for ``openai/<name>`` with an ``api_base`` because litellm spends
about 5 ms of CPU per call (see benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from vpo_core.config import LLMConfig
from vpo_core.errors import StageFailed, TransientError
from vpo_core.llm.batch import BatchAPI, BatchQueue, batch_target
from vpo_core.llm.engine import Engine, Limits, Priority, engine
from vpo_core.llm.store import (
    CallStore,
    Stored,
    endpoint_id,
    keep,
    open_store,
    request_key,
    store_location,
)
from vpo_core.llm.tokens import estimate_tokens
from vpo_core.llm.transports import TRANSIENT_KINDS, CallError, Completion, make_transport
from vpo_core.progress import Progress

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("vpo_core.llm")
LOGGED_FAILURES = 3


@dataclass(frozen=True)
class LLMRequest:
    """One chat completion to make; ``id`` ties the answer back to its row. A message's
    ``content`` is text, or a list of OpenAI content parts (text and image_url).
    Sampling fields left None take the configuration's value (or are not sent); each one
    set is sent and enters the call store's key, so K samples of one query with their
    own ``seed`` are K calls, never one."""

    id: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # what else a server reads
                                                          # (repetition_penalty, ...)


@dataclass
class LLMResult:
    """The outcome of one request: ``status`` is ``ok`` or ``error:<kind>`` (``error``
    then says why, as the provider or the exception said it). ``cached``: answered
    without a request of its own (from the call store, or by the same request in flight
    in this process); ``cost`` is then what the original call cost, i.e. the saving."""

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
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def transient(self) -> bool:
        """A failure a later retry may fix (rate limit, timeout, 5xx, ...)."""
        return self.status.removeprefix("error:") in TRANSIENT_KINDS


Ask = Callable[[LLMRequest], Awaitable[LLMResult]]


@dataclass
class Scrubber:
    """Removes secrets from any text the client keeps (errors end up in Parquet)."""

    secrets: list[str] = field(default_factory=list)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


def raise_if_outage(results: Sequence[LLMResult], what: str) -> None:
    """Stop a step whose every call failed: :class:`TransientError` when all failures
    were transient (the provider is down or overloaded; Prefect retries the task with
    backoff), else :class:`StageFailed` with the provider's first permanent message (a
    wrong key, an unknown model: no retry can help)."""
    if not results or any(r.ok for r in results):
        return
    kinds = dict(Counter(r.status for r in results))
    permanent = next((r for r in results if not r.transient), None)
    if permanent is not None:
        raise StageFailed(f"{what}: all {len(results)} calls failed ({kinds}); first error: "
                          f"{permanent.error}")
    raise TransientError(f"{what}: all {len(results)} calls failed with transient errors "
                         f"({kinds}); the provider seems unavailable; first error: "
                         f"{results[0].error}")


def request_params(cfg: LLMConfig, request: LLMRequest) -> dict[str, Any]:
    """The sampling parameters sent with a request: exactly these reach the transport and
    the call store's key."""
    params: dict[str, Any] = {
        "temperature": cfg.temperature if request.temperature is None else request.temperature,
        "max_tokens": request.max_tokens or cfg.max_tokens}
    seed = cfg.seed if request.seed is None else request.seed
    if seed is not None:
        params["seed"] = seed
    if request.top_p is not None:
        params["top_p"] = request.top_p
    if request.stop:
        params["stop"] = list(request.stop)
    return params | request.extra


def model_identity(cfg: LLMConfig, identity: str | None) -> str | None:
    """What tells two models of one name apart in the call store's key: the caller's
    identity of a served model (its weights' hash), and for the embedded model the
    decoding settings its provider applies (they shape the answer but are not sent)."""
    if cfg.model.startswith("local/"):
        local = f"repetition_penalty={cfg.repetition_penalty},no_repeat_ngram_size=" \
                f"{cfg.no_repeat_ngram_size}"
        return f"{identity};{local}" if identity else local
    return identity


class LLMClient:
    """Chat completions against one configured model.

    ``work_root`` is the pipeline's work directory: it holds the default call store
    (``llm/calls.sqlite``) and the records of pending batches (``llm/batches/``). Without
    it there is no store, unless ``cfg.call_store`` names a shared one. ``identity`` names
    the model's weights when its name does not (a served policy that each training
    replaces under one name: pass its hash), so a new model never gets an older one's
    answers from the store.
    """

    def __init__(self, cfg: LLMConfig, api_key: str | None = None,
                 model_cache: str | None = None, work_root: str | Path | None = None,
                 identity: str | None = None) -> None:
        self.cfg = cfg
        self.identity = model_identity(cfg, identity)
        self.api_key = api_key
        self.model_cache = model_cache
        self.scrub = Scrubber([api_key] if api_key else [])
        self.store_location = store_location(cfg, work_root)
        self.batch_folder = Path(work_root).expanduser() / "llm" / "batches" \
            if work_root is not None else None
        self.batch_base, self.batch_model = batch_target(cfg) if cfg.batch else (None, None)
        self._lane: _Lane | None = None
        self._lane_engine: Engine | None = None

    def run(self, requests: Sequence[LLMRequest],
            on_result: Callable[[LLMResult], None] | None = None) -> list[LLMResult]:
        """Answer every request (same order); ``on_result`` is called as each finishes
        (on the engine's thread)."""
        async def one(request: LLMRequest, ask: Ask) -> LLMResult:
            result = await ask(request)
            if on_result is not None:
                on_result(result)
            return result

        return engine().call(self._chains(list(requests), one, "calls"))

    def run_chains(self, items: Sequence[T],
                   chain: Callable[[T, Ask], Coroutine[Any, Any, R]]) -> list[R]:
        """Run ``await chain(item, ask)`` for every item, all at once, and return their
        results in order. ``ask(request)`` makes one call; all asks of the process share
        the model's limits. An exception raised by a chain cancels the others and reaches
        the caller as it was raised."""
        return engine().call(self._chains(list(items), chain, "rows"))

    async def _chains(self, items: list[T], chain: Callable[[T, Ask], Coroutine[Any, Any, R]],
                      what: str) -> list[R]:
        eng = engine()
        lane = self._lane_on_loop(eng)
        progress = Progress(f"{self.cfg.model} {what}", len(items))
        tally = _Tally(self.cfg.model)
        if lane.batch is not None:
            lane.batch.chains_started(len(items))

        async def one(item: T) -> R:
            order, step = next(eng.sequence), itertools.count()

            async def ask(request: LLMRequest) -> LLMResult:
                result = await lane.ask(request, (next(step), order))
                tally.add(request, result)
                return result

            try:
                return await chain(item, ask)
            finally:
                progress.step()
                if lane.batch is not None:
                    lane.batch.chain_ended()

        tasks = [asyncio.ensure_future(one(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            tally.summarise()

    def _lane_on_loop(self, eng: Engine) -> _Lane:
        if self._lane is None or self._lane_engine is not eng:
            cfg = self.cfg
            store = None
            if self.store_location is not None:
                key = ("store", self.store_location)
                store = eng.shared.get(key)
                if store is None:
                    store = eng.shared[key] = open_store(self.store_location, cfg)
            batch = None
            if cfg.batch:
                key = ("batch", cfg.model, self.batch_base, self.api_key,
                       str(self.batch_folder), self.store_location)
                batch = eng.shared.get(key)
                if batch is None:
                    api = BatchAPI(self.batch_base, self.api_key, eng.session(), cfg.timeout_s)
                    batch = eng.shared[key] = BatchQueue(cfg, api, self.batch_model,
                                                         self.batch_folder, store)
            transport = make_transport(cfg, self.api_key, self.model_cache, eng.session())
            self._lane = _Lane(cfg, transport, eng.limits_for(cfg), store, batch, self.scrub,
                               eng.inflight, endpoint_id(cfg.api_base), self.identity)
            self._lane_engine = eng
        else:
            self._lane.limits.configure(self.cfg)
        return self._lane


@dataclass
class _Lane:
    """How one client's calls travel, on the engine's loop."""

    cfg: LLMConfig
    transport: Any
    limits: Limits
    store: CallStore | None
    batch: BatchQueue | None
    scrub: Scrubber
    inflight: dict[str, asyncio.Future]
    endpoint: str | None = None
    identity: str | None = None

    async def ask(self, request: LLMRequest, priority: Priority) -> LLMResult:
        """The store's answer; else the answer of the same request already in flight in
        this process (asked once, answered to all); else a call of its own, claimed in
        the store so no other process makes it at the same time."""
        cfg, start = self.cfg, time.perf_counter()
        if cfg.system_prompt and request.messages[0].get("role") != "system":
            request = replace(request, messages=[
                {"role": "system", "content": cfg.system_prompt}, *request.messages])
        params = request_params(cfg, request)
        key = request_key(cfg.model, request.messages, params, self.endpoint, self.identity)
        if self.store is not None:
            hit = await self.store.get(key)
            if hit is not None:
                return self._stored(request, hit, start)
        leader = self.inflight.get(key)
        if leader is not None:
            first = await asyncio.shield(leader)
            if first is not None and first.ok:
                return replace(first, id=request.id, attempts=0, cached=True,
                               seconds=time.perf_counter() - start)
        future = self.inflight.setdefault(key, asyncio.get_running_loop().create_future())
        result = None
        try:
            result = await self._claimed(request, params, priority, key, start)
            return result
        finally:
            if self.inflight.get(key) is future:
                del self.inflight[key]
                future.set_result(result)

    async def _claimed(self, request: LLMRequest, params: dict[str, Any],
                       priority: Priority, key: str, start: float) -> LLMResult:
        """The call, made by whichever process claims it first; the others wait for its
        answer in the store (a batch call is collected by its own records instead). A
        waiter whose claimant fails or dies claims the call itself; one that has waited
        as long as the call itself may take makes it regardless."""
        store = self.store
        if store is None or self.batch is not None:
            return await self._call(request, params, priority, key, start)
        deadline = time.monotonic() + self._longest_call_s()
        while True:
            async with store.claim(key) as mine:
                if mine:
                    hit = await store.get(key)  # answered between our look and our claim
                    if hit is not None:
                        return self._stored(request, hit, start)
                    return await self._call(request, params, priority, key, start)
            hit = await store.wait(key, deadline)
            if hit is not None:
                return self._stored(request, hit, start)
            if time.monotonic() >= deadline:
                log.warning("%s: call %s: another process held its claim for %.0f s without"
                            " an answer; making the call", self.cfg.model, request.id,
                            self._longest_call_s())
                return await self._call(request, params, priority, key, start)

    def _longest_call_s(self) -> float:
        """How long one call may take with all its attempts and backoffs."""
        cfg = self.cfg
        return cfg.timeout_s * (cfg.max_retries + 1) + cfg.max_backoff_s * cfg.max_retries

    async def _call(self, request: LLMRequest, params: dict[str, Any], priority: Priority,
                    key: str, start: float) -> LLMResult:
        if self.batch is not None:
            done = await self.batch.ask(key, request.messages, params)
            if done is not None:  # stored by the batch's poller
                return self._ok(request, done, 1, start)
        result = await self._attempts(request, params, priority, start)
        if result.ok and self.store is not None:
            await keep(self.store, key, Stored(result.text, result.prompt_tokens,
                                               result.completion_tokens, result.cost))
        return result

    def _stored(self, request: LLMRequest, hit: Stored, start: float) -> LLMResult:
        return LLMResult(request.id, "ok", hit.text, self.cfg.model, hit.prompt_tokens,
                         hit.completion_tokens, hit.cost, 0, time.perf_counter() - start,
                         cached=True)

    def _ok(self, request: LLMRequest, done: Completion, attempts: int, start: float
            ) -> LLMResult:
        return LLMResult(request.id, "ok", done.text, self.cfg.model, done.prompt_tokens,
                         done.completion_tokens, done.cost, attempts,
                         time.perf_counter() - start)

    async def _attempts(self, request: LLMRequest, params: dict[str, Any], priority: Priority,
                        start: float) -> LLMResult:
        """Attempts until an answer, a permanent error or the last retry. The slot is held
        for each attempt only, never while waiting out a backoff."""
        cfg, limits = self.cfg, self.limits
        attempt = 0
        while True:
            attempt += 1
            await limits.gate.acquire(priority)
            try:
                if limits.rpm is not None:
                    await limits.rpm.acquire()
                if limits.tpm is not None:
                    need = estimate_tokens(request.messages, params["max_tokens"])
                    await limits.tpm.acquire(min(need, cfg.tokens_per_minute))
                done: Completion = await self.transport.complete(request, params)
            except CallError as err:
                error = err
            except Exception as exc:  # a bug or a library's surprise: keep what it said
                log.warning("%s: unexpected error in call %s", cfg.model, request.id,
                            exc_info=True)
                error = CallError("unknown", f"{type(exc).__name__}: {exc}")
            else:
                return self._ok(request, done, attempt, start)
            finally:
                limits.gate.release()
            if error.transient and attempt <= cfg.max_retries:
                await asyncio.sleep(self._delay(attempt, error.retry_after))
                continue
            return LLMResult(request.id, f"error:{error.kind}", None, cfg.model,
                             attempts=attempt, seconds=time.perf_counter() - start,
                             error=self.scrub(str(error))[:500])

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Retry-After when the server sends one, else exponential backoff with jitter;
        never longer than ``max_backoff_s``."""
        cap = self.cfg.max_backoff_s
        if retry_after is not None:
            return min(max(retry_after, 0.0), cap)
        return min(self.cfg.retry_base_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5), cap)


@dataclass
class _Tally:
    """Logs the first few failed calls of a run with their cause, and a count at the end."""

    model: str
    failures: Counter = field(default_factory=Counter)
    total: int = 0

    def add(self, request: LLMRequest, result: LLMResult) -> None:
        self.total += 1
        if result.ok:
            return
        self.failures[result.status] += 1
        if sum(self.failures.values()) <= LOGGED_FAILURES:
            log.warning("%s: call %s failed after %d attempt(s): %s", self.model, request.id,
                        result.attempts, result.error)

    def summarise(self) -> None:
        failed = sum(self.failures.values())
        if failed > LOGGED_FAILURES:
            log.warning("%s: %d of %d calls failed (%s)", self.model, failed, self.total,
                        dict(self.failures))
