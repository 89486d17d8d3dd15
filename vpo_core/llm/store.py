"""The call store: every completed answer, keyed by the content of its request, so no
call is ever made twice (by any stage, shard layout, run or machine sharing the store).

The key (:func:`request_key`) is the SHA-256 of the canonical JSON of what decides the
answer: the model's name and identity (a served model's weights hash, when the caller
knows it), the endpoint (``api_base``, normalised, never a key or a password), the
messages (templates and demonstrations are inside them, so a changed template changes
the key) and every sampling parameter sent (temperature, top_p, max_tokens, seed, stop,
...). Two servers serving different models under one name, or K samples of one query
with their own seeds, never share an answer. Only successful answers are stored: an
error is retried by the next run, never replayed.

Backends (``judge.call_store``):

- ``sqlite`` (default): ``<work dir>/llm/calls.sqlite`` in WAL mode. Each answer is
  committed as it arrives, so a SIGKILLed run keeps every answer it received; several
  threads and processes of ONE machine may read and write it at once. WAL needs shared
  memory between its writers, so it must not live on a network file system (``vpo
  check`` refuses that): machines that share work use Redis.
- ``redis://host:port/db``: a Redis server shared by several machines (the password, if
  any, from the environment variable named by ``judge.call_store_password_env``). Every
  command has a connect and a socket timeout and a bounded retry with backoff; a process
  about to make a call first claims it (``SET NX`` with an expiry it renews while the call
  runs), so a second process asking the same thing waits for the first one's answer
  instead of paying for it again. A claimant that dies stops renewing; its claim expires
  and a waiter makes the call.
- ``off``: no store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson

from vpo_core.config import LLMConfig
from vpo_core.errors import ConfigError, TransientError

SQLITE_FILE = Path("llm") / "calls.sqlite"
REDIS_PREFIX = "vpo:llm:call:"
CLAIM_PREFIX = "vpo:llm:claim:"
POLL_FIRST_S, POLL_MAX_S = 0.02, 0.1    # a waiter's polls for the claimant's answer
LOGGED_PUT_FAILURES = 3
REDIS_CONNECTIONS = 32  # per process; commands take well under a millisecond
log = logging.getLogger("vpo_core.llm")

# Compare-and-renew / compare-and-delete: a claim is only ever touched by its holder.
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
          "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end")
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) else return 0 end")


def endpoint_id(api_base: str | None) -> str | None:
    """The endpoint as the key holds it: scheme and host lower-cased, default port,
    credentials, query and trailing slash dropped, so spellings of one server agree and
    nothing secret enters the key."""
    if not api_base:
        return None
    parts = urlsplit(api_base.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), "", ""))


def request_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any],
                endpoint: str | None = None, identity: str | None = None) -> str:
    """SHA-256 of the canonical JSON of a request: model (name and identity), endpoint,
    messages and the sampling parameters sent."""
    blob = orjson.dumps({"model": model, "identity": identity, "endpoint": endpoint,
                         "messages": messages, "params": params},
                        option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Stored:
    """A stored answer: the text, its token counts and what it cost when it was made."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost: float

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_json(cls, blob: bytes | str) -> Stored:
        return cls(**orjson.loads(blob))


class CallStore(Protocol):
    failed_puts: int  # answers it could not store (see :func:`keep`)

    async def get(self, key: str) -> Stored | None: ...

    async def put(self, key: str, value: Stored) -> None: ...

    def claim(self, key: str) -> contextlib.AbstractAsyncContextManager[bool]:
        """Held while this process makes the call: True when the call is this process's
        to make, False when another process holds it (then :meth:`wait`)."""
        ...

    async def wait(self, key: str, deadline: float) -> Stored | None:
        """The claimant's answer; None once the claim is gone without one (it failed or
        died) or at ``deadline`` (``time.monotonic()``)."""
        ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


async def keep(store: CallStore, key: str, value: Stored) -> bool:
    """Store an answer; a store that fails is logged, never raised: the answer is already
    paid for and goes on into the step's output, only a later re-run asks for it again.
    The first few failures of a store are logged with their cause, then every
    hundredth."""
    try:
        await store.put(key, value)
    except Exception as exc:
        store.failed_puts += 1
        failed = store.failed_puts
        if failed <= LOGGED_PUT_FAILURES or failed % 100 == 0:
            log.warning("call store: an answer could not be stored (%d so far; kept in this"
                        " step's output, a re-run asks for it again): %s: %s", failed,
                        type(exc).__name__, exc)
        return False
    return True


class SQLiteStore:
    """One SQLite file in WAL mode. Reads and writes are sub-millisecond, so they run on
    the engine's loop; ``busy_timeout`` lets writers of several processes take turns.
    Claims are not needed: the processes of one machine rarely ask the same thing at the
    same moment, and a cluster shares Redis."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.failed_puts = path, 0
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                  timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a kill
        self.db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, "
                        "answer BLOB NOT NULL, created REAL NOT NULL)")

    async def get(self, key: str) -> Stored | None:
        row = self.db.execute("SELECT answer FROM calls WHERE key = ?", (key,)).fetchone()
        return Stored.from_json(row[0]) if row else None

    async def put(self, key: str, value: Stored) -> None:
        self.db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?)",
                        (key, value.to_json(), time.time()))

    @contextlib.asynccontextmanager
    async def claim(self, key: str) -> AsyncIterator[bool]:
        yield True

    async def wait(self, key: str, deadline: float) -> Stored | None:
        return await self.get(key)

    async def ping(self) -> None:
        self.db.execute("SELECT count(*) FROM calls LIMIT 1").fetchone()

    async def aclose(self) -> None:
        self.db.close()


class StoreUnavailable(TransientError):
    """The Redis store did not answer within its timeouts and retries. Transient: Prefect
    retries the task; the message names the settings to look at."""


class RedisStore:
    """A Redis server shared by the machines of a cluster. Each command has a connect and
    a socket timeout and is retried with exponential backoff and jitter on connection
    errors and timeouts (``judge.call_store_*``); a server still unreachable after that
    is a transient failure of the task (Prefect retries it), not a run without the store.
    """

    def __init__(self, url: str, password: str | None, cfg: LLMConfig) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialWithJitterBackoff
        from redis.exceptions import ConnectionError, TimeoutError

        self.url, self.cfg, self.failed_puts = url, cfg, 0
        self.claim_ms = int(cfg.call_store_claim_s * 1000)
        self._refused = False  # the server refused a claim (logged once)
        # thousands of rows asking at once queue on a semaphore for one of the pool's
        # connections (past its size the pool raises "Too many connections"; with
        # redis-py's BlockingConnectionPool, 400 rows at once timed out waiting for one:
        # "No connection available")
        self._slots = asyncio.Semaphore(REDIS_CONNECTIONS)
        pool = aioredis.ConnectionPool.from_url(
            url, password=password, max_connections=REDIS_CONNECTIONS,
            socket_connect_timeout=cfg.call_store_connect_timeout_s,
            socket_timeout=cfg.call_store_timeout_s,
            retry=Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.1),
                        cfg.call_store_retries, (ConnectionError, TimeoutError)),
            retry_on_error=[ConnectionError, TimeoutError])
        self.client = aioredis.Redis(connection_pool=pool)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)

    async def _do(self, what: str, command: Callable[[], Awaitable[Any]]) -> Any:
        """Run one command (on a free connection); an unreachable server becomes
        :class:`StoreUnavailable` naming the settings that bound the wait."""
        from redis.exceptions import ConnectionError, TimeoutError

        try:
            async with self._slots:
                return await command()
        except (ConnectionError, TimeoutError) as exc:
            cfg = self.cfg
            raise StoreUnavailable(
                f"judge.call_store {self.url}: {what} failed after "
                f"{cfg.call_store_retries + 1} attempt(s) (judge.call_store_retries="
                f"{cfg.call_store_retries}) with judge.call_store_connect_timeout_s="
                f"{cfg.call_store_connect_timeout_s} and judge.call_store_timeout_s="
                f"{cfg.call_store_timeout_s}: {type(exc).__name__}: {exc}. Is the Redis "
                "server up and reachable from this machine?") from exc

    async def get(self, key: str) -> Stored | None:
        blob = await self._do("GET", lambda: self.client.get(REDIS_PREFIX + key))
        return Stored.from_json(blob) if blob is not None else None

    async def put(self, key: str, value: Stored) -> None:
        await self._do("SET", lambda: self.client.set(REDIS_PREFIX + key, value.to_json()))

    @contextlib.asynccontextmanager
    async def claim(self, key: str) -> AsyncIterator[bool]:
        from redis.exceptions import ResponseError

        name, token = CLAIM_PREFIX + key, uuid.uuid4().hex
        try:
            won = await self._do("SET NX", lambda: self.client.set(
                name, token, nx=True, px=self.claim_ms))
        except ResponseError as exc:  # the server refuses writes (maxmemory, a replica)
            if not self._refused:
                log.warning("call store: calls cannot be claimed (%s); they are made "
                            "unclaimed", exc)
            self._refused = True
            yield True
            return
        if not won:
            yield False
            return
        done = asyncio.Event()
        renewer = asyncio.get_running_loop().create_task(self._keep_claim(name, token, done))
        try:
            yield True
        finally:
            done.set()  # not cancel(): redis-py may turn a cancellation into a timeout
            await renewer
            try:
                await self._do("release", lambda: self._release(keys=[name], args=[token]))
            except Exception as exc:  # it expires by itself
                log.warning("call store: a claim could not be released (%s); it expires "
                            "in %.0f s", exc, self.cfg.call_store_claim_s)

    async def _keep_claim(self, name: str, token: str, done: asyncio.Event) -> None:
        """Renew the claim until ``done`` (a dead process stops renewing)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.claim_ms / 3000)
                return
            try:
                await self._do("renew", lambda: self._renew(keys=[name],
                                                            args=[token, self.claim_ms]))
            except Exception as exc:
                log.warning("call store: a claim could not be renewed: %s", exc)

    async def wait(self, key: str, deadline: float) -> Stored | None:
        pause = POLL_FIRST_S
        while True:
            blob, claimed = await self._do("GET", lambda: self._answer_or_claim(key))
            if blob is not None:
                return Stored.from_json(blob)
            if not claimed or time.monotonic() >= deadline:
                return None
            await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, POLL_MAX_S)

    async def _answer_or_claim(self, key: str) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            return await pipe.get(REDIS_PREFIX + key).exists(CLAIM_PREFIX + key).execute()

    async def ping(self) -> None:
        await self._do("PING", self.client.ping)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()


def store_location(cfg: LLMConfig, work_root: str | Path | None) -> str | None:
    """Where the configured store lives (a file path or a URL); None for no store."""
    spec = cfg.call_store
    if spec == "off":
        return None
    if spec.startswith(("redis://", "rediss://")):
        return spec
    if work_root is None:  # sqlite needs a work directory
        return None
    return str(Path(work_root).expanduser().resolve() / SQLITE_FILE)


def open_store(location: str, cfg: LLMConfig) -> CallStore:
    """Open a store on the engine's loop."""
    if location.startswith(("redis://", "rediss://")):
        password = None
        if cfg.call_store_password_env:
            password = os.environ.get(cfg.call_store_password_env)
            if not password:
                raise ConfigError(f"judge.call_store_password_env: the environment variable "
                                  f"{cfg.call_store_password_env} is not set")
        return RedisStore(location, password, cfg)
    return SQLiteStore(Path(location))
