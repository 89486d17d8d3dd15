"""A local OpenAI-compatible chat server with scripted latency and faults.

Tests and benchmarks point the LLM client at it (``openai/<name>`` with ``api_base``), so
the whole HTTP path runs: the OpenAI SDK, litellm, retries, timeouts and parsing. Faults
are chosen per request from a seeded schedule:

- ``rate_limit``: 429 with a ``Retry-After`` header
- ``server_error``: 500
- ``hang``: sleeps past the client's timeout
- ``malformed``: a 200 whose body is not JSON
- ``empty``: a 200 with no choices

Answers are deterministic functions of the request, written to look like a judge and
teacher following VPO's templates; ``responder`` replaces them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

FAULTS = ("rate_limit", "server_error", "hang", "malformed", "empty")


def message_text(content: str | list[dict]) -> str:
    """A message's text: the content itself, or its text parts joined (vision requests
    send a list of text and image_url parts)."""
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content if p.get("type") == "text")


def default_responder(messages: list[dict]) -> str:
    """A plausible answer to VPO's generation, critique, refinement and safety prompts."""
    last = message_text(messages[-1]["content"])
    digest = int(hashlib.sha256(last.encode()).hexdigest(), 16)
    # the query of the conversation (a refinement turn asks after the critique's message)
    asked = next((q for m in reversed(messages) if m.get("role") == "user"
                  for q in re.findall(r"User Query: “(.*?)”", message_text(m["content"]),
                                      re.S)[-1:]), None)
    topic = " ".join((asked or last[-80:]).split())[:120]
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
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULTS
    retry_after: float = 0.2
    hang_seconds: float = 30.0
    seed: int = 0
    api_key: str | None = None
    responder: Callable[[list[dict]], str] = default_responder
    requests: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._chat)
        self.app.post("/chat/completions")(self._chat)

    def _fault(self) -> str | None:
        with self._lock:
            return (self._rng.choice(self.faults)
                    if self.faults and self._rng.random() < self.fault_rate else None)

    async def _chat(self, request: Request) -> Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Request) -> Response:
        body = await request.json()
        messages = body.get("messages", [])
        self.arrivals.append(time.monotonic())
        self.requests[message_text(messages[-1]["content"]) if messages else ""] += 1
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            self.outcomes["auth"] += 1
            return JSONResponse({"error": {"message": "Incorrect API key provided",
                                           "type": "invalid_request_error",
                                           "code": "invalid_api_key"}}, status_code=401)
        if self.latency:
            await asyncio.sleep(self.latency)
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
        text = self.responder(messages)
        prompt_tokens = sum(len(message_text(m.get("content", "")).split()) for m in messages)
        choices = [] if fault == "empty" else [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": text}}]
        return JSONResponse({
            "id": f"chatcmpl-{sum(self.requests.values())}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "fake"),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                      "total_tokens": prompt_tokens + len(text.split())}})


class ServerThread:
    """Run a FakeOpenAI app with uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, fake: FakeOpenAI, port: int | None = None) -> None:
        self.fake = fake
        self.port = port or _free_port()
        self.server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="off"))
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
    interrupted (benchmarks run it in its own process)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeOpenAI(latency=args.latency, fault_rate=args.fault_rate)
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
