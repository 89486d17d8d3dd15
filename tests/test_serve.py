"""`vpo serve` with the bundled model on CPU, over real HTTP: concurrent requests are
batched and answer what `Optimizer.optimize` answers for the same queries; batch requests;
the OpenAI SDK against /v1/chat/completions; bad requests get clear 4xx answers. Then the
optimizer in front of the tiny CogVideoX, falling back to the query when it fails."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from vpo_core.config import RenderConfig
from vpo_core.models.bundled import bundled_model_dir
from vpo_core.optimizer import Optimizer, Sampling
from vpo_core.render.pipelines import tiny_cogvideox
from vpo_core.serve import http_optimizer, rewrite, text_to_video

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 24
QUERIES = ["a cute dog on the grass", "city lights at night -ar 16:9", "waves",
           "an astronaut riding a horse on mars, slow zoom", "a bowl of ramen, steam rising",
           "two people dancing tango in the rain", "cat", "a red fox in the snow"]


@pytest.fixture(scope="module")
def model(bundled_models: Path) -> str:
    return str(bundled_model_dir(bundled_models))


@pytest.fixture(scope="module")
def optimizer(model: str) -> Optimizer:
    return Optimizer(model)


@pytest.fixture(scope="module")
def server(model: str, tmp_path_factory) -> str:
    """`vpo serve` in its own process on a free port, until the module's tests are done."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--model", model, "--port", str(port),
             "--max-new-tokens", str(TOKENS), "--wait-ms", "50", "--work-dir",
             str(log.parent / "work")], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                if _get(url, "/health")["status"] == "ok":
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"vpo serve did not start:\n{log.read_text()}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=10) as answer:
        return json.loads(answer.read())


def _post(url: str, path: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_concurrent_requests_are_batched_and_answer_as_optimize(
        server: str, optimizer: Optimizer) -> None:
    before = _get(server, "/health")
    with ThreadPoolExecutor(len(QUERIES)) as pool:
        answers = list(pool.map(lambda q: _post(server, "/v1/optimize", {"query": q}),
                                QUERIES))
    after = _get(server, "/health")
    expected = [r[0] for r in optimizer.optimize(QUERIES, sampling=Sampling(
        max_new_tokens=TOKENS))]
    assert [status for status, _ in answers] == [200] * len(QUERIES)
    assert [a["prompt"] for _, a in answers] == expected
    assert [a["query"] for _, a in answers] == QUERIES
    assert after["requests"] - before["requests"] == len(QUERIES)
    assert after["batches"] - before["batches"] < len(QUERIES)     # batched
    assert after["largest_batch"] > 1
    assert after["engine"] == "transformers" and after["device"] == "cpu"


def test_a_batch_request_and_a_seeded_sample(server: str, optimizer: Optimizer) -> None:
    status, answer = _post(server, "/v1/optimize", {"queries": QUERIES[:3]})
    assert status == 200
    greedy = [r[0] for r in optimizer.optimize(QUERIES[:3], sampling=Sampling(
        max_new_tokens=TOKENS))]
    assert [r["prompt"] for r in answer["results"]] == greedy
    assert all(isinstance(r["truncated"], bool) for r in answer["results"])
    sampled = {"query": QUERIES[0], "temperature": 0.9, "top_p": 0.9, "seed": 3}
    _, first = _post(server, "/v1/optimize", sampled)
    [[expected]] = optimizer.optimize([QUERIES[0]], sampling=Sampling(0.9, 0.9, TOKENS, 3))
    assert first["prompt"] == expected


def test_openai_clients_get_the_optimized_prompt(server: str, optimizer: Optimizer) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    done = client.chat.completions.create(
        model="vpo", messages=[{"role": "user", "content": QUERIES[1]}], temperature=0,
        max_tokens=TOKENS)
    [[expected]] = optimizer.optimize([QUERIES[1]], sampling=Sampling(max_new_tokens=TOKENS))
    assert done.choices[0].message.content == expected
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage.completion_tokens <= TOKENS and done.usage.prompt_tokens > 20
    assert client.models.list().data[0].id.endswith("smollm2-135m-instruct")


@pytest.mark.parametrize(("path", "body", "status", "message", "param"), [
    ("/v1/optimize", b'{"query": "a cat",', 400, "not valid JSON", None),
    ("/v1/optimize", {"query": "   "}, 400, "query is empty", "query"),
    ("/v1/optimize", {"query": "a " * 51_200}, 400,
     "102,400 characters long; this server accepts at most 2,000", "query"),
    ("/v1/optimize", {"queries": ["a cat", ""]}, 400, "queries[1] is empty", "queries[1]"),
    ("/v1/optimize", {}, 400, "send either query", "query"),
    ("/v1/optimize", {"query": ["a cat"]}, 400, "query: Input should be a valid string",
     "query"),
    ("/v1/optimize", {"query": "a cat", "max_new_tokens": 10_000}, 400,
     f"at most {TOKENS} new tokens", "max_new_tokens"),
    ("/v1/optimize", {"query": "a cat", "temperature": -1}, 400, "temperature", "temperature"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "hi"}]}, 400,
     "no user message", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a cat"}], "n": 2},
     400, "one optimized prompt per request", "n"),
    ("/v1/optimize", b"x" * (2 << 20), 413, "accepts at most 1,048,576", None),
])
def test_bad_requests_get_a_clear_4xx(server: str, path: str, body: bytes | dict,
                                      status: int, message: str, param: str | None) -> None:
    got, answer = _post(server, path, body)
    assert got == status
    assert message in answer["error"]["message"]
    assert answer["error"]["param"] == param
    assert answer["error"]["type"] == "invalid_request_error"


def _video(pipe, prompt: str) -> np.ndarray:
    cfg = RenderConfig()
    return pipe(prompt=prompt, num_frames=cfg.num_frames, height=cfg.height, width=cfg.width,
                num_inference_steps=cfg.num_inference_steps, generator=torch.Generator()
                .manual_seed(0), output_type="np").frames[0]


def test_the_optimizer_in_front_of_a_video_pipeline_falls_back_to_the_query(
        server: str, optimizer: Optimizer) -> None:
    pipe = tiny_cogvideox(RenderConfig())
    query = QUERIES[0]
    call = {"num_frames": RenderConfig().num_frames, "height": 64, "width": 64,
            "num_inference_steps": 4, "output_type": "np"}

    down = http_optimizer("http://127.0.0.1:9", timeout_s=5)        # nothing listens there
    output, used = text_to_video(pipe, query, down, generator=torch.Generator().manual_seed(0),
                                 **call)
    assert not used.optimized and used.prompt == query and "Connection" in used.error
    assert np.array_equal(output.frames[0], _video(pipe, query))  # rendered from the query

    output, used = text_to_video(pipe, query, http_optimizer(server),
                                 generator=torch.Generator().manual_seed(0), **call)
    [[expected]] = optimizer.optimize([query], sampling=Sampling(max_new_tokens=TOKENS))
    assert used.optimized and used.prompt == expected != query and used.error is None
    assert np.array_equal(output.frames[0], _video(pipe, expected))
    assert not np.array_equal(output.frames[0], _video(pipe, query))

    assert rewrite(query, lambda q: "  ") == rewrite(query, lambda q: "")
    assert rewrite(query, lambda q: "").error == "the optimizer answered nothing"
