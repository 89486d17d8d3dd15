"""A local OpenAI-compatible chat server with scripted latency and faults, and the
files and batches endpoints of the Batch API.

Tests and benchmarks point the LLM client at it (``openai/<name>`` with ``api_base``), so
the whole HTTP path runs: the OpenAI SDK, litellm, retries, timeouts and parsing. Latency
is constant, or lognormal around a median (``latency_sigma`` > 0), like a real API's;
``slow`` gives the requests whose last message contains a key that key's latency.
Faults are chosen per request from a seeded schedule:

- ``rate_limit``: 429 with a ``Retry-After`` header
- ``server_error``: 500
- ``hang``: sleeps past the client's timeout
- ``malformed``: a 200 whose body is not JSON
- ``empty``: a 200 with no choices

Answers are deterministic functions of the request, written to look like a judge and
teacher following VPO's templates; ``responder`` replaces them.

Batches (``POST /v1/files``, ``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET
/v1/batches/{id}``) finish ``batch_seconds`` after creation with ``batch_outcome``:
``completed`` (every line answered, but ``batch_fault_rate`` of them with a 500),
``expired`` (only ``batch_expired_share`` of the lines answered, the others in the error
file with ``batch_expired``) or ``failed`` (nothing answered). Counters: ``requests``
(chat completions by last message), ``conversations`` (by the whole conversation),
``batch_items`` (batch lines by last message),
``endpoints`` (requests per route), ``latency_total`` (seconds of latency served);
``GET /v1/stats`` returns them for a server in another process.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

FAULTS = ("rate_limit", "server_error", "hang", "malformed", "empty")
BACKLOG = 4096


def message_text(content: str | list[dict]) -> str:
    """A message's text: the content itself, or its text parts joined (vision requests
    send a list of text and image_url parts)."""
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content if p.get("type") == "text")


def conversation_key(messages: list[dict]) -> str:
    """A digest of a whole conversation (``requests`` counts by the last message only,
    which every refinement turn shares)."""
    return hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).hexdigest()


def default_responder(messages: list[dict]) -> str:
    """A plausible answer to VPO's generation, critique, refinement and safety prompts."""
    last = message_text(messages[-1]["content"])
    digest = int(hashlib.sha256(last.encode()).hexdigest(), 16)
    # the query of the conversation (a refinement turn asks after the critique's message)
    # (quoted in the critique, bare on its own line in Figure 7's generation template)
    asked = next((q or bare for m in reversed(messages) if m.get("role") == "user"
                  for q, bare in re.findall(r"User Query: (?:“(.*?)”|([^“\n].*)\n)",
                                            message_text(m["content"]), re.S)[-1:]), None)
    # what a teacher would depict: the query without its -flags (-ar 16:9, -neg people)
    # and without template words a query may carry (injection attempts)
    topic = re.split(r"\s[-—–]{1,2}[a-z]+\b|final\s+judge?ment|\[",
                     " ".join((asked or last[-80:]).split()), flags=re.I)[0][:120]
    if "Final Refined Prompt" in last:
        return (f"Reflection on how to refine the Prompt: keep every detail.\nFinal Refined "
                f"Prompt: [[start]] A refined, safe and detailed scene of {topic}, soft light, "
                f"steady camera. [[end]]")
    if "Final Judgement (Yes or No)" in last:
        verdict = "Yes" if digest % 2 else "No"
        return ("Step-by-step verification: compared query and prompt.\n"
                f"Final Judgement (Yes or No): {verdict}")
    if "Unsafe (Yes or No)" in last:
        return f"Reason: checked.\nUnsafe (Yes or No): {'Yes' if digest % 3 else 'No'}"
    return (f"Here is the prompt.\n[[start]] A cinematic, detailed video of {topic}, natural "
            f"light, smooth camera movement, rich textures. [[end]]")


@dataclass
class FakeOpenAI:
    """The server's behaviour, editable while it runs."""

    latency: float = 0.0
    latency_sigma: float = 0.0
    slow: dict[str, float] = field(default_factory=dict)  # last-message text -> latency
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULTS
    retry_after: float = 0.2
    hang_seconds: float = 30.0
    seed: int = 0
    api_key: str | None = None
    responder: Callable[[list[dict]], str] = default_responder
    batch_seconds: float = 0.5
    batch_outcome: str = "completed"
    batch_fault_rate: float = 0.0
    batch_expired_share: float = 0.5
    requests: Counter = field(default_factory=Counter)
    conversations: Counter = field(default_factory=Counter)
    batch_items: Counter = field(default_factory=Counter)
    endpoints: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)
    last_answer: float = 0.0
    latency_total: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._chat)
        self.app.post("/chat/completions")(self._chat)
        self.app.post("/v1/files")(self._upload)
        self.app.get("/v1/files/{file_id}/content")(self._file_content)
        self.app.post("/v1/batches")(self._create_batch)
        self.app.get("/v1/batches/{batch_id}")(self._retrieve_batch)
        self.app.get("/v1/stats")(self._stats)

    def _fault(self) -> str | None:
        with self._lock:
            return (self._rng.choice(self.faults)
                    if self.faults and self._rng.random() < self.fault_rate else None)

    def _latency(self) -> float:
        if not self.latency or not self.latency_sigma:
            return self.latency
        with self._lock:
            return self._rng.lognormvariate(math.log(self.latency), self.latency_sigma)

    def _unauthorised(self, request: Request) -> JSONResponse | None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            self.outcomes["auth"] += 1
            return JSONResponse({"error": {"message": "Incorrect API key provided",
                                           "type": "invalid_request_error",
                                           "code": "invalid_api_key"}}, status_code=401)
        return None

    async def _chat(self, request: Request) -> Response:
        self.endpoints["POST /v1/chat/completions"] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1
            self.last_answer = time.monotonic()

    async def _answer(self, request: Request) -> Response:
        body = await request.json()
        messages = body.get("messages", [])
        self.arrivals.append(time.monotonic())
        self.requests[message_text(messages[-1]["content"]) if messages else ""] += 1
        self.conversations[conversation_key(messages)] += 1
        if (denied := self._unauthorised(request)) is not None:
            return denied
        last = message_text(messages[-1]["content"]) if messages else ""
        latency = next((v for k, v in self.slow.items() if k in last), None)
        latency = self._latency() if latency is None else latency
        if latency:
            self.latency_total += latency
            await asyncio.sleep(latency)
        fault = self._fault()
        self.outcomes[fault or "ok"] += 1
        if fault == "rate_limit":
            return JSONResponse({"error": {"message": "Rate limit reached", "type": "requests",
                                           "code": "rate_limit_exceeded"}}, status_code=429,
                                headers={"retry-after": str(self.retry_after)})
        if fault == "server_error":
            return JSONResponse({"error": {"message": "The server had an error"}},
                                status_code=500)
        if fault == "hang":
            await asyncio.sleep(self.hang_seconds)
        if fault == "malformed":
            return Response('{"id": "chatcmpl-x", "choices": [{"message": ', status_code=200,
                            media_type="application/json")
        completion = self._completion(body)
        if fault == "empty":
            completion["choices"] = []
        return JSONResponse(completion)

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages", [])
        text = self.responder(messages)
        prompt_tokens = sum(len(message_text(m.get("content", "")).split()) for m in messages)
        return {
            "id": f"chatcmpl-{sum(self.requests.values()) + sum(self.batch_items.values())}",
            "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                      "total_tokens": prompt_tokens + len(text.split())}}

    # ------------------------------------------------------------------ Batch API
    async def _upload(self, request: Request) -> Response:
        self.endpoints["POST /v1/files"] += 1
        if (denied := self._unauthorised(request)) is not None:
            return denied
        head = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
        form = BytesParser(policy=HTTP).parsebytes(head + await request.body())
        parts = {p.get_param("name", header="content-disposition"): p
                 for p in form.iter_parts()}
        if "file" not in parts:
            return JSONResponse({"error": {"message": "no file part"}}, status_code=400)
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = parts["file"].get_payload(decode=True)
        return JSONResponse({"id": file_id, "object": "file", "purpose": "batch",
                             "bytes": len(self.files[file_id]),
                             "created_at": int(time.time()), "filename": "requests.jsonl"})

    async def _file_content(self, file_id: str) -> Response:
        self.endpoints["GET /v1/files/content"] += 1
        if file_id not in self.files:
            return JSONResponse({"error": {"message": f"no file {file_id}"}}, status_code=404)
        return Response(self.files[file_id], media_type="application/jsonl")

    async def _create_batch(self, request: Request) -> Response:
        self.endpoints["POST /v1/batches"] += 1
        if (denied := self._unauthorised(request)) is not None:
            return denied
        body = await request.json()
        if body.get("input_file_id") not in self.files:
            return JSONResponse({"error": {"message": "unknown input_file_id"}},
                                status_code=400)
        batch_id = f"batch_{len(self.batches) + 1}"
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"),
            "input_file_id": body["input_file_id"], "status": "in_progress",
            "completion_window": body.get("completion_window"),
            "created_at": int(time.time()), "metadata": body.get("metadata"),
            "output_file_id": None, "error_file_id": None, "_due": time.monotonic()
            + self.batch_seconds, "_outcome": self.batch_outcome}
        return JSONResponse(self._public(self.batches[batch_id]))

    async def _retrieve_batch(self, batch_id: str) -> Response:
        self.endpoints["GET /v1/batches"] += 1
        batch = self.batches.get(batch_id)
        if batch is None:
            return JSONResponse({"error": {"message": f"no batch {batch_id}"}},
                                status_code=404)
        if batch["status"] == "in_progress" and time.monotonic() >= batch["_due"]:
            self._finish(batch)
        return JSONResponse(self._public(batch))

    def _finish(self, batch: dict[str, Any]) -> None:
        outcome = batch["_outcome"]
        lines = [orjson.loads(line) for line in self.files[batch["input_file_id"]].splitlines()
                 if line.strip()]
        answered = {"completed": len(lines), "failed": 0,
                    "expired": int(len(lines) * self.batch_expired_share)}[outcome]
        out, errors = [], []
        for i, line in enumerate(lines):
            messages = line["body"].get("messages", [])
            if i >= answered:
                errors.append({"id": f"req_{i}", "custom_id": line["custom_id"],
                               "response": None, "error": {"code": "batch_expired",
                               "message": "not completed within the window"}})
                continue
            self.batch_items[message_text(messages[-1]["content"]) if messages else ""] += 1
            if self._rng.random() < self.batch_fault_rate:
                out.append({"id": f"req_{i}", "custom_id": line["custom_id"], "error": None,
                            "response": {"status_code": 500, "body": {
                                "error": {"message": "The server had an error"}}}})
                continue
            out.append({"id": f"req_{i}", "custom_id": line["custom_id"], "error": None,
                        "response": {"status_code": 200, "body": self._completion(line["body"])}})
        batch["status"] = outcome
        for name, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = b"".join(orjson.dumps(r) + b"\n" for r in rows)
                batch[name] = file_id
        batch["request_counts"] = {"total": len(lines), "completed": len(out),
                                   "failed": len(errors)}

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def _stats(self, since: float = 0.0) -> dict[str, Any]:
        """Counters; ``first_arrival`` (after ``since``) and ``last_answer`` on the
        machine's monotonic clock, which other processes share."""
        first = next((a for a in self.arrivals if a >= since), None)
        return {"requests": sum(self.requests.values()), "first_arrival": first,
                "last_answer": self.last_answer,
                "batch_items": sum(self.batch_items.values()),
                "endpoints": dict(self.endpoints), "outcomes": dict(self.outcomes),
                "latency_total": self.latency_total, "max_in_flight": self.max_in_flight}


class ServerThread:
    """Run a FakeOpenAI app with uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, fake: FakeOpenAI, port: int | None = None) -> None:
        self.fake = fake
        self.port = port or _free_port()
        self.server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="off",
                                                    backlog=BACKLOG, access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    """``python -m vpo_core.testing.openai_server --port 8123 --latency 0.1``: serve until
    interrupted (benchmarks run it in its own process; ``GET /v1/stats`` reads its
    counters)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds per answer (the median when --latency-sigma > 0)")
    parser.add_argument("--latency-sigma", type=float, default=0.0,
                        help="sigma of a lognormal latency (0: constant)")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated faults to draw from ({', '.join(FAULTS)})")
    parser.add_argument("--retry-after", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-seconds", type=float, default=0.5)
    args = parser.parse_args()
    fake = FakeOpenAI(latency=args.latency, latency_sigma=args.latency_sigma,
                      fault_rate=args.fault_rate, faults=tuple(args.faults.split(",")),
                      retry_after=args.retry_after, seed=args.seed,
                      batch_seconds=args.batch_seconds)
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, backlog=BACKLOG)


if __name__ == "__main__":
    main()
