"""Batch mode: a stage's calls through the OpenAI-compatible Batch API (upload a JSONL
file to ``/files``, create a ``/batches`` job, poll it, download its output file).
OpenAI charges half the price of the same calls made one by one and answers within the
completion window (usually minutes to hours).

Calls are collected, not sent: when every running chain waits on the batch (or
``batch_collect_s`` after the first pending call), the pending calls go out as one batch,
and each caller gets its answer when the batch completes; the chains' next steps form
the next batch. Each submitted batch is recorded in ``<work dir>/llm/batches/<hash>.json``
(the hash of its requests' keys) until it is collected, so a run killed while a batch is
pending polls the same batch when it runs again instead of paying for a second one.
Items the batch did not answer (failed, expired, a batch the provider rejected) come
back as ``None`` and the caller sends them the normal way. Answers enter the call store.

The endpoints are called with aiohttp, the HTTP transport's library: litellm's
``acreate_file``/``acreate_batch``/``aretrieve_batch``/``afile_content`` reach the same
endpoints through the OpenAI SDK but add nothing for OpenAI-compatible servers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from vpo_core.config import LLMConfig
from vpo_core.errors import ConfigError
from vpo_core.llm.store import CallStore, Stored, keep
from vpo_core.llm.transports import CallError, Completion, completion_from, kind_of_status

log = logging.getLogger("vpo_core.llm.batch")
OPENAI_BASE = "https://api.openai.com/v1"
ENDPOINT = "/v1/chat/completions"
PRICE_FACTOR = 0.5
TERMINAL = {"completed", "expired", "failed", "cancelled"}


def batch_target(cfg: LLMConfig) -> tuple[str, str]:
    """(base URL, model name in the request body) of a configuration's Batch API."""
    if cfg.model.startswith("openai/"):
        return cfg.api_base or OPENAI_BASE, cfg.model.split("/", 1)[1]
    if "/" not in cfg.model:  # a plain OpenAI model name (gpt-4o)
        return cfg.api_base or OPENAI_BASE, cfg.model
    raise ConfigError(f"judge.batch: the Batch API is available for OpenAI and OpenAI-"
                      f"compatible servers ('gpt-4o', 'openai/<name>' with api_base), not "
                      f"{cfg.model!r}")


class BatchAPI:
    """The four Batch API endpoints, errors as :class:`CallError`."""

    def __init__(self, base: str, api_key: str | None, session: aiohttp.ClientSession,
                 timeout_s: float) -> None:
        self.base, self.session = base.rstrip("/"), session
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _call(self, method: str, path: str, **kwargs: Any) -> bytes:
        try:
            async with self.session.request(method, self.base + path, headers=self.headers,
                                            timeout=self.timeout, **kwargs) as resp:
                body = await resp.read()
        except TimeoutError as exc:
            raise CallError("timeout", f"{method} {path}: no answer") from exc
        except aiohttp.ClientError as exc:
            raise CallError("connection", f"{method} {path}: {type(exc).__name__}: {exc}"
                            ) from exc
        if resp.status != 200:
            text = body.decode(errors="replace")
            raise CallError(kind_of_status(resp.status, text),
                            f"{method} {path}: HTTP {resp.status}: {text[:300]}")
        return body

    async def upload(self, content: bytes) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename="requests.jsonl",
                       content_type="application/jsonl")
        return orjson.loads(await self._call("POST", "/files", data=form))["id"]

    async def create(self, file_id: str, window: str, metadata: dict[str, str]
                     ) -> dict[str, Any]:
        return orjson.loads(await self._call("POST", "/batches", json={
            "input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": window,
            "metadata": metadata}))

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return orjson.loads(await self._call("GET", f"/batches/{batch_id}"))

    async def content(self, file_id: str) -> bytes:
        return await self._call("GET", f"/files/{file_id}/content")


@dataclass
class BatchQueue:
    """Pending calls of the chains that share one model and work directory."""

    cfg: LLMConfig
    api: BatchAPI
    model_name: str
    folder: Path | None
    store: CallStore | None
    active: int = 0
    waiting: int = 0
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    futures: dict[str, list[asyncio.Future]] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] | None = None     # key -> recorded batch
    following: dict[str, asyncio.Task] = field(default_factory=dict)
    batches_sent: int = 0
    _timer: asyncio.TimerHandle | None = None
    _tasks: set[asyncio.Task] = field(default_factory=set)

    # ------------------------------------------------------------------ chains
    def chains_started(self, n: int) -> None:
        self.active += n

    def chain_ended(self) -> None:
        self.active -= 1
        self._check()

    async def ask(self, key: str, messages: list[dict[str, Any]], params: dict[str, Any]
                  ) -> Completion | None:
        """The batch's answer to one request, or None: send it the normal way."""
        future = asyncio.get_running_loop().create_future()
        waiters = self.futures.setdefault(key, [])
        waiters.append(future)
        if len(waiters) == 1:  # not yet pending nor in a batch
            self.pending[key] = {"model": self.model_name, "messages": messages, **params}
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(
                    self.cfg.batch_collect_s, self._flush)
        self.waiting += 1  # until answered: a chain resumed later still counts as waiting
        self._check()
        try:
            return await future
        finally:
            if future.cancelled():
                self.waiting -= 1
                self._check()

    def _check(self) -> None:
        if self.pending and self.waiting >= self.active:
            self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.pending:
            return
        bodies, self.pending = self.pending, {}
        task = asyncio.get_running_loop().create_task(self._send(bodies))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ batches
    def _load_records(self) -> dict[str, dict[str, Any]]:
        if self.records is None:
            self.records = {}
            for path in sorted(self.folder.glob("*.json")) if self.folder else []:
                try:
                    record = orjson.loads(path.read_bytes())
                except orjson.JSONDecodeError:
                    log.warning("batch record %s is unreadable; ignoring it", path)
                    continue
                record["path"] = str(path)
                for key in record["keys"]:
                    self.records[key] = record
        return self.records

    async def _send(self, bodies: dict[str, dict[str, Any]]) -> None:
        """Follow the recorded batches that hold some of these requests; send the rest
        as a new batch."""
        records = self._load_records()
        old = {records[k]["batch_id"]: records[k] for k in bodies if k in records}
        fresh = {k: b for k, b in bodies.items() if k not in records}
        jobs: list[Awaitable[None]] = [self._follow(r) for r in old.values()]
        if fresh:
            jobs.append(self._submit(fresh))
        await asyncio.gather(*jobs)

    async def _submit(self, bodies: dict[str, dict[str, Any]]) -> None:
        keys = sorted(bodies)
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
        lines = b"".join(orjson.dumps({"custom_id": k, "method": "POST", "url": ENDPOINT,
                                       "body": bodies[k]}) + b"\n" for k in keys)
        try:
            file_id = await self._retrying(lambda: self.api.upload(lines))
            batch = await self._retrying(lambda: self.api.create(
                file_id, self.cfg.batch_completion_window, {"vpo_requests": digest[:32]}))
        except Exception as err:  # any failure: the calls still go out one by one
            log.warning("batch of %d calls not accepted (%s: %s); sending them one by one",
                        len(keys), type(err).__name__, err)
            self._resolve({k: None for k in keys})
            return
        self.batches_sent += 1
        record = {"batch_id": batch["id"], "input_file_id": file_id, "model": self.cfg.model,
                  "created": time.time(), "keys": keys}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{digest}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(record))
            tmp.replace(path)
            record["path"] = str(path)
        for key in keys:
            self._load_records()[key] = record
        log.info("batch %s sent: %d calls", batch["id"], len(keys))
        await self._follow(record)

    async def _follow(self, record: dict[str, Any]) -> None:
        """Wait for a batch (one poller per batch, however many callers)."""
        task = self.following.get(record["batch_id"])
        if task is None:
            task = self.following[record["batch_id"]] = asyncio.get_running_loop() \
                .create_task(self._poll(record))
        await asyncio.shield(task)

    async def _poll(self, record: dict[str, Any]) -> None:
        batch_id, answers = record["batch_id"], {}
        try:
            while True:
                batch = await self._retrying(lambda: self.api.retrieve(batch_id))
                if batch.get("status") in TERMINAL:
                    break
                await asyncio.sleep(self.cfg.batch_poll_s)
            if batch.get("output_file_id"):
                output = await self._retrying(
                    lambda: self.api.content(batch["output_file_id"]))
                answers = self._answers(output)
            log.info("batch %s %s: %d of %d calls answered%s", batch_id, batch["status"],
                     len(answers), len(record["keys"]),
                     "" if len(answers) == len(record["keys"])
                     else "; the others are sent one by one")
        except Exception as err:  # any failure: the calls still go out one by one
            log.warning("batch %s cannot be collected (%s: %s); sending its calls one by one",
                        batch_id, type(err).__name__, err)
        if self.store is not None:
            for key, done in answers.items():
                await keep(self.store, key, Stored(done.text, done.prompt_tokens,
                                                   done.completion_tokens, done.cost))
        if record.get("path"):
            Path(record["path"]).unlink(missing_ok=True)
        records = self._load_records()
        for key in record["keys"]:
            if records.get(key) is record:
                del records[key]
        self._resolve({k: answers.get(k) for k in record["keys"]})

    def _answers(self, output: bytes) -> dict[str, Completion]:
        answers = {}
        for line in output.splitlines():
            if not line.strip():
                continue
            item = orjson.loads(line)
            response = item.get("response") or {}
            if response.get("status_code") != 200:
                continue
            try:
                answers[item["custom_id"]] = completion_from(response.get("body") or {},
                                                             self.cfg.model, PRICE_FACTOR)
            except CallError:
                continue  # malformed or empty: sent again the normal way
        return answers

    def _resolve(self, answers: dict[str, Completion | None]) -> None:
        for key, done in answers.items():
            for future in self.futures.pop(key, []):
                if not future.done():
                    self.waiting -= 1
                    future.set_result(done)

    async def _retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """A Batch API call with the client's retries of transient errors."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except CallError as err:
                if not err.transient or attempt > self.cfg.max_retries:
                    raise
                delay = min(self.cfg.retry_base_s * 2 ** (attempt - 1), self.cfg.max_backoff_s)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
