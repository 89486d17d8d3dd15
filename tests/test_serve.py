"""`vpo serve` with the bundled model on CPU, over real HTTP: concurrent requests are
batched and answer what `Optimizer.optimize` answers for the same queries; batch requests;
the OpenAI SDK against /v1/chat/completions; messages that hold the instruction are used as
given, with per-request seeds, n and the full token budget; the served-policy sample
backend against it (K samples per query, equal to the transformers backend's, none asked
twice); bad requests get clear 4xx answers. Then the guarded server (token, bounded
queue, deadline, chunked body limit, metrics, 500s), the server launcher, and the optimizer
in front of the tiny CogVideoX, falling back to the query when it fails. Servers are
started by `vpo_core.sample.server_process`, one per module fixture."""

from __future__ import annotations

import http.client
import json
import logging
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from vpo_core.config import PolicyServerConfig, RenderConfig, SampleConfig
from vpo_core.errors import ConfigError, StageFailed
from vpo_core.models.bundled import bundled_model_dir
from vpo_core.optimizer import Optimizer, Sampling, stable_seed
from vpo_core.prompts.templates import optimizer_messages
from vpo_core.render.pipelines import tiny_cogvideox
from vpo_core.sample.served import check_served_model, served_model_name
from vpo_core.sample.server_process import ServerProcess, free_port, start_policy_server
from vpo_core.sample.stage import query_seed, sample_shard
from vpo_core.serve import Limits, create_app, http_optimizer, rewrite, text_to_video
from vpo_core.workdir import ACTIVE_ENV

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 24
KEY_ENV = "VPO_TEST_SERVE_KEY"
KEY = "test-key-not-a-secret"
QUERIES = ["a cute dog on the grass", "city lights at night -ar 16:9", "waves",
           "an astronaut riding a horse on mars, slow zoom", "a bowl of ramen, steam rising",
           "two people dancing tango in the rain", "cat", "a red fox in the snow"]


@pytest.fixture(scope="module")
def model(bundled_models: Path) -> str:
    return str(bundled_model_dir(bundled_models))


@pytest.fixture(scope="module")
def optimizer(model: str) -> Optimizer:
    return Optimizer(model)


def _vpo_serve(model: str, tmp: Path, *options: str, env: dict | None = None
               ) -> ServerProcess:
    """`vpo serve` in its own process on a free port (started, and later stopped, by the
    launcher the pipeline uses)."""
    port = free_port()
    command = [sys.executable, "-m", "flows.cli", "serve", "--model", model, "--port",
               str(port), "--work-dir", str(tmp / "work"), *options]
    return ServerProcess(command, f"http://127.0.0.1:{port}",
                         {"PYTHONPATH": str(ROOT), **(env or {})}, start_timeout_s=600,
                         log_path=tmp / "serve.log").start()


@pytest.fixture(scope="module")
def server(model: str, tmp_path_factory) -> str:
    """`vpo serve` of the bundled model under its content-hash name, until the module's
    tests are done."""
    proc = _vpo_serve(model, tmp_path_factory.mktemp("serve"), "--default-new-tokens",
                      str(TOKENS), "--wait-ms", "50", "--served-model-name",
                      served_model_name(model))
    yield proc.url
    assert proc.stop() is not None and proc.proc.poll() is not None


def _get(url: str, path: str, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url + path, headers=headers),
                                timeout=30) as answer:
        return json.loads(answer.read())


def _post(url: str, path: str, body: bytes | dict, key: str | None = None,
          timeout: float = 300) -> tuple[int, dict]:
    return _call(url, path, body, key, timeout)[:2]


def _call(url: str, path: str, body: bytes | dict | None, key: str | None = None,
          timeout: float = 300) -> tuple[int, dict, dict]:
    """Status, JSON answer and headers of one request."""
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + path, data, headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def _metrics(url: str, key: str | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, parsed by the Prometheus client's own parser:
    (name, sorted labels) -> value."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url + "/metrics", headers=headers),
                                timeout=30) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _chat_requests(url: str) -> float:
    return _metrics(url).get(("vpo_serve_requests_total", (
        ("route", "/v1/chat/completions"), ("status", "200"))), 0.0)


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


def test_openai_clients_get_the_optimized_prompt(server: str, optimizer: Optimizer,
                                                 model: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    done = client.chat.completions.create(
        model="vpo", messages=[{"role": "user", "content": QUERIES[1]}], temperature=0,
        max_tokens=TOKENS)
    [[expected]] = optimizer.optimize([QUERIES[1]], sampling=Sampling(max_new_tokens=TOKENS))
    assert done.choices[0].message.content == expected
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage.completion_tokens <= TOKENS and done.usage.prompt_tokens > 20
    assert client.models.list().data[0].id == served_model_name(model)


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
     "at most 2048 new tokens", "max_new_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a cat"}],
                              "max_tokens": 2049}, 400, "at most 2048 new tokens",
     "max_tokens"),
    ("/v1/optimize", {"query": "a cat", "temperature": -1}, 400, "temperature", "temperature"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}]}, 400,
     "no user message", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a cat"}], "n": 65},
     400, "at most 64 choices", "n"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "x" * 20_000},
                                           {"role": "user", "content": "a cat"}]}, 400,
     "at most 16,000", "messages"),
    ("/v1/optimize", b"x" * (2 << 20), 413, "1,048,576 bytes at most", None),
])
def test_bad_requests_get_a_clear_4xx(server: str, path: str, body: bytes | dict,
                                      status: int, message: str, param: str | None) -> None:
    got, answer = _post(server, path, body)
    assert got == status
    assert message in answer["error"]["message"]
    assert answer["error"]["param"] == param
    assert answer["error"]["type"] == "invalid_request_error"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """The bundled tiny random Llama (seconds to build, no SmolLM2 conversion): the served
    policy of the sampling tests, where what matters is which tokens are drawn, not their
    sense."""
    return str(bundled_model_dir(tmp_path_factory.mktemp("tiny"), "tiny-llama"))


@pytest.fixture(scope="module")
def tiny_optimizer(tiny: str) -> Optimizer:
    return Optimizer(tiny)


@pytest.fixture(scope="module")
def policy(tiny: str, tmp_path_factory) -> str:
    """`vpo serve` of the tiny model under its content-hash name, as the pipeline would
    start it for a sample stage."""
    proc = _vpo_serve(tiny, tmp_path_factory.mktemp("policy"), "--served-model-name",
                      served_model_name(tiny), "--wait-ms", "50")
    yield proc.url
    proc.stop()


def test_messages_with_the_instruction_are_used_as_given_with_their_seed(
        policy: str, tiny_optimizer: Optimizer) -> None:
    """What the sample backend sends: the optimizer's own messages, a seed per sample; the
    server adds no second instruction and draws row `seed + j` for choice j."""
    server, optimizer = policy, tiny_optimizer
    query, sampling = QUERIES[3], Sampling(0.9, 0.9, TOKENS)
    body = {"messages": optimizer_messages(query), "temperature": 0.9, "top_p": 0.9,
            "max_tokens": TOKENS}
    answers = [_post(server, "/v1/chat/completions", {**body, "seed": s})[1] for s in (5, 5, 6)]
    texts = [a["choices"][0]["message"]["content"] for a in answers]
    # one row per call, as the server ran them (the random model's near-ties make a
    # different batch shape flip tokens, unlike a trained model's)
    alone = [optimizer.generate([query], sampling, [s])[0] for s in (5, 6)]
    assert texts == [alone[0].text, alone[0].text, alone[1].text]
    assert texts[0] != texts[2]                                   # another seed, another draw
    status, both = _post(server, "/v1/chat/completions", {**body, "seed": 5, "n": 2})
    assert status == 200
    together = optimizer.generate([query] * 2, sampling, [5, 6])  # one call of two rows
    assert [c["message"]["content"] for c in both["choices"]] == [g.text for g in together]
    assert both["usage"]["completion_tokens"] == sum(g.tokens for g in together)

    own = [{"role": "system", "content": "You answer in French."},
           {"role": "user", "content": "a cat"}]
    _, answer = _post(server, "/v1/chat/completions", {"messages": own, "max_tokens": TOKENS})
    [generated] = optimizer.generate_chats([own], Sampling(max_new_tokens=TOKENS))
    assert answer["choices"][0]["message"]["content"] == generated.text


def test_the_official_token_budget_is_allowed(server: str) -> None:
    status, answer = _post(server, "/v1/chat/completions", {
        "messages": [{"role": "system", "content": "Answer with one word."},
                     {"role": "user", "content": "Is the sky blue?"}], "max_tokens": 2048})
    assert status == 200
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert TOKENS < 2048 and answer["usage"]["completion_tokens"] < 2048


@pytest.fixture
def served_sampling(policy: str, tmp_path: Path, monkeypatch) -> SampleConfig:
    """The paper's sampling settings (short prompts) on the served policy, with the call
    store in the test's work directory; one request at a time, so that each is generated
    alone and can be compared with the same row generated alone here."""
    monkeypatch.setenv(ACTIVE_ENV, str(tmp_path / "work"))
    return SampleConfig(k=4, temperature=0.9, top_p=0.9, max_new_tokens=TOKENS,
                        repetition_penalty=1.0, no_repeat_ngram_size=0,
                        backend="openai-server",
                        server=PolicyServerConfig(api_base=f"{policy}/v1", concurrency=1,
                                                  max_retries=1))


def test_a_served_policy_sample_shard(policy: str, tiny: str, tiny_optimizer: Optimizer,
                                      served_sampling: SampleConfig, tmp_path: Path) -> None:
    """K samples per query through the LLM engine; they equal the transformers backend's
    (same seeds, temperature, top-p, token budget reached the server); a re-run with the
    same call store sends no request."""
    cfg, server, model, optimizer = served_sampling, policy, tiny, tiny_optimizer
    rows = [{"query_id": f"q{i}", "query": q, "split": "dpo", "safety": False}
            for i, q in enumerate(QUERIES[:2])]
    before = _chat_requests(server)
    first = sample_shard(rows, model, cfg, 7, tmp_path / "out1", 0)
    after = _chat_requests(server)
    df = pl.read_parquet(first["samples"].path)
    assert after - before == len(rows) * cfg.k                     # one request per sample
    assert df.height == len(rows) * cfg.k
    assert sorted(df.filter(pl.col("query_id") == "q0")["sample_index"]) == [0, 1, 2, 3]
    assert not any(status.startswith("error") for status in df["status"])
    seeds = [query_seed(7, r["query_id"]) for r in rows]
    assert df["seed"].unique().sort().to_list() == sorted(seeds)
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    by_row = {(r["query_id"], r["sample_index"]): r["prompt"] for r in df.iter_rows(named=True)}
    assert by_row == {   # the transformers backend's rows: Optimizer.sample's seeds
        (row["query_id"], j): optimizer.generate([row["query"]], sampling, [
            stable_seed(qseed, j)])[0].text or None
        for row, qseed in zip(rows, seeds, strict=True) for j in range(cfg.k)}
    assert df.filter(pl.col("query_id") == "q0")["prompt"].n_unique() > 1   # seeds differ
    assert stable_seed(seeds[0], 0) != stable_seed(seeds[0], 1)

    again = sample_shard(rows, model, cfg, 7, tmp_path / "out2", 0)
    assert _chat_requests(server) == after                          # all from the call store
    assert pl.read_parquet(again["samples"].path).equals(df)


def test_the_served_model_must_be_the_trained_one(policy: str, tiny: str, tmp_path: Path
                                                  ) -> None:
    api = f"{policy}/v1"
    name = served_model_name(tiny)
    assert check_served_model(api, name, tiny)["root"] == str(Path(tiny).resolve())
    with pytest.raises(ConfigError, match=r"not 'vpo-policy-0000' \(start it with --served"):
        check_served_model(api, "vpo-policy-0000", tiny)
    other = tmp_path / "another-model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not from the trained model"):
        check_served_model(api, name, str(other))
    assert served_model_name(str(other)) != name


def test_the_launcher_stops_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    ignores = ("import signal, runpy, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "sys.argv = ['http.server', '--bind', '{host}', '{port}']; "
               "runpy.run_module('http.server', run_name='__main__')")
    cfg = PolicyServerConfig(command=[sys.executable, "-c", ignores], health_path="/",
                             start_timeout_s=60)
    proc = start_policy_server(cfg, "unused", "unused", log_path=tmp_path / "log")
    assert urllib.request.urlopen(proc.url + "/", timeout=10).status == 200
    assert proc.stop(grace_s=1) == -9                                # SIGTERM, then SIGKILL
    with pytest.raises(OSError):
        urllib.request.urlopen(proc.url + "/", timeout=5)

    fails = PolicyServerConfig(command=[sys.executable, "-c", "print('bad flag'); exit(3)"])
    with pytest.raises(StageFailed, match=r"(?s)exited with code 3 .*bad flag"):
        start_policy_server(fails, "m", "m", log_path=tmp_path / "log2")
    with pytest.raises(ConfigError, match=r"unknown placeholder \{modle\}"):
        start_policy_server(PolicyServerConfig(command=["x", "{modle}"]), "m", "m")
    with pytest.raises(ConfigError, match="cannot start the server"):
        start_policy_server(PolicyServerConfig(command=["/nonexistent/vllm"]), "m", "m")
    with pytest.raises(ConfigError, match="command is empty"):
        start_policy_server(PolicyServerConfig(), "m", "m")


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


# --- the guarded server: token, bounded queue, deadline, body limit, metrics ------------

@pytest.fixture(scope="module")
def guarded(tiny: str, tmp_path_factory) -> str:
    """`vpo serve` of the tiny random Llama (it seldom stops on its own, so a long budget
    keeps the engine busy) with an API key, one row of queue, a 3-second deadline and a
    4 KiB body limit; warmed up by one request (the first builds the prefix cache)."""
    proc = _vpo_serve(tiny, tmp_path_factory.mktemp("guarded"), "--api-key-env", KEY_ENV,
                      "--max-queue", "1", "--request-timeout-s", "3", "--max-body-bytes",
                      "4096", "--default-new-tokens", "4", "--max-new-tokens", "3000",
                      env={KEY_ENV: KEY})
    _post(proc.url, "/v1/optimize", {"query": "warm up"}, KEY)
    yield proc.url
    proc.stop(grace_s=5)


def test_a_token_is_required_but_for_health(guarded: str) -> None:
    assert _get(guarded, "/health")["status"] == "ok"
    for key in (None, "wrong", f"{KEY}x"):
        status, answer, headers = _call(guarded, "/v1/models", None, key)
        assert status == 401 and answer["error"]["type"] == "authentication_error"
        assert headers["www-authenticate"] == "Bearer"
    assert _call(guarded, "/metrics", None)[0] == 401
    assert _get(guarded, "/v1/models", KEY)["data"][0]["root"].endswith("tiny-llama")
    status, answer = _post(guarded, "/v1/optimize", {"query": "a cat"}, KEY)
    assert status == 200 and isinstance(answer["prompt"], str)
    assert http_optimizer(guarded, 60, KEY)("a cat") == answer["prompt"]
    with pytest.raises(urllib.error.HTTPError, match="401"):
        http_optimizer(guarded, 60)("a cat")


def _chunked_post(url: str, path: str, chunks: list[bytes], key: str) -> tuple[int, dict]:
    """POST with Transfer-Encoding: chunked (no Content-Length)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=iter(chunks), encode_chunked=True, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_a_chunked_body_is_held_to_the_limit(guarded: str) -> None:
    small = json.dumps({"query": "a red fox in the snow"}).encode()
    status, answer = _chunked_post(guarded, "/v1/optimize", [small[:10], small[10:]], KEY)
    assert status == 200 and answer["query"] == "a red fox in the snow"
    big = [b'{"query": "' + b"a" * 1024] + [b"a" * 1024] * 63 + [b'"}']   # 64 KiB
    status, answer = _chunked_post(guarded, "/v1/optimize", big, KEY)
    assert status == 413 and "4,096 bytes at most" in answer["error"]["message"]


def test_metrics_in_prometheus_format(guarded: str) -> None:
    before = _metrics(guarded, KEY)
    _call(guarded, "/v1/models", None, "wrong")
    _post(guarded, "/v1/optimize", {"query": "a cat"}, KEY)
    after = _metrics(guarded, KEY)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("vpo_serve_requests_total", route="/v1/models", status="401") == 1
    assert grew("vpo_serve_requests_total", route="/v1/optimize", status="200") == 1
    assert grew("vpo_serve_request_seconds_count", route="/v1/optimize") == 1
    assert grew("vpo_serve_batch_size_count") >= 1 and grew("vpo_serve_batch_size_sum") == 1
    assert grew("vpo_serve_generated_tokens_total") > 0
    assert after[("vpo_serve_queue_depth", ())] == 0
    assert ("vpo_serve_rows_in_flight", ()) in after


class _Broken:
    """A model whose generation fails with internals in its message."""

    name = "broken"

    def generate_chats(self, conversations, sampling, seeds=None):
        raise RuntimeError("CUDA error at /srv/secret/model.py:42 token=abc123")


def test_a_500_names_a_request_id_not_the_internals(caplog) -> None:
    app = create_app(_Broken(), limits=Limits(request_timeout_s=30))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        with caplog.at_level(logging.ERROR, logger="vpo_core.serve"):
            status, answer, headers = _call(f"http://127.0.0.1:{port}", "/v1/optimize",
                                            {"query": "a cat"})
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert status == 500 and answer["error"]["type"] == "server_error"
    assert "secret" not in json.dumps(answer) and "RuntimeError" not in json.dumps(answer)
    assert headers["x-request-id"] in answer["error"]["message"]
    assert any(headers["x-request-id"] in r.getMessage() and r.exc_info
               for r in caplog.records)
    assert "/srv/secret" in caplog.text                              # the log has it all


def test_a_full_queue_answers_429_and_a_late_answer_504(guarded: str) -> None:
    def idle() -> None:
        deadline = time.monotonic() + 300
        while _get(guarded, "/health")["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.2)

    idle()
    # the random model seldom stops early: 3,000 tokens keep the engine busy past the
    # deadline (minutes here); the fixture's teardown kills the server meanwhile
    long = {"messages": [{"role": "user", "content": "a cat"}], "max_tokens": 3000}
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_call, guarded, "/v1/chat/completions", long, KEY)
        deadline = time.monotonic() + 30
        while not _get(guarded, "/health")["in_flight"]:
            assert time.monotonic() < deadline and not slow.done()
            time.sleep(0.05)
        status, answer, headers = _call(guarded, "/v1/optimize", {"query": "a dog"}, KEY)
        assert status == 429 and answer["error"]["type"] == "rate_limit_error"
        assert int(headers["retry-after"]) >= 1 and "--max-queue" in answer["error"]["message"]
        status, answer, _ = slow.result()
    assert status == 504 and answer["error"]["type"] == "timeout"
    assert "no answer within 3 s" in answer["error"]["message"]
