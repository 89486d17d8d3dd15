"""The call store: every completed answer, keyed by the content of its request, so no
call is ever made twice (by any stage, shard layout, run or machine sharing the store).

The key is the SHA-256 of the canonical JSON of what is sent: the model, the messages
(templates and demonstrations are inside them, so a changed template changes the key)
and every sampling parameter (temperature, max_tokens, seed). Only successful answers
are stored: an error is retried by the next run, never replayed.

Backends (``judge.call_store``):

- ``sqlite`` (default): ``<work dir>/llm/calls.sqlite`` in WAL mode. Each answer is
  committed as it arrives, so a SIGKILLed run keeps every answer it received; several
  threads and processes of one machine may read and write it at once. WAL needs shared
  memory between its writers, so workers on several machines (a work directory on NFS)
  should share a Redis store instead.
- ``redis://host:port/db``: a Redis server shared by several machines (the password, if
  any, from the environment variable named by ``judge.call_store_password_env``).
- ``off``: no store.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from vpo_core.config import LLMConfig
from vpo_core.errors import ConfigError, TransientError

SQLITE_FILE = Path("llm") / "calls.sqlite"
REDIS_PREFIX = "vpo:llm:call:"


def request_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request: model, messages, sampling parameters."""
    blob = orjson.dumps({"model": model, "messages": messages, **params},
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
    async def get(self, key: str) -> Stored | None: ...

    async def put(self, key: str, value: Stored) -> None: ...

    async def aclose(self) -> None: ...


class SQLiteStore:
    """One SQLite file in WAL mode. Reads and writes are sub-millisecond, so they run on
    the engine's loop; ``busy_timeout`` lets writers of several processes take turns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
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

    async def aclose(self) -> None:
        self.db.close()


class RedisStore:
    """A Redis server shared by the machines of a cluster. An unreachable server is a
    transient failure of the task (Prefect retries it), not a run without the store."""

    def __init__(self, url: str, password: str | None) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.client = aioredis.from_url(url, password=password)

    async def get(self, key: str) -> Stored | None:
        from redis.exceptions import ConnectionError, TimeoutError

        try:
            blob = await self.client.get(REDIS_PREFIX + key)
        except (ConnectionError, TimeoutError) as exc:
            raise TransientError(f"call store {self.url}: {exc}") from exc
        return Stored.from_json(blob) if blob is not None else None

    async def put(self, key: str, value: Stored) -> None:
        from redis.exceptions import ConnectionError, TimeoutError

        try:
            await self.client.set(REDIS_PREFIX + key, value.to_json())
        except (ConnectionError, TimeoutError) as exc:
            raise TransientError(f"call store {self.url}: {exc}") from exc

    async def aclose(self) -> None:
        await self.client.aclose()


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
        return RedisStore(location, password)
    return SQLiteStore(Path(location))
