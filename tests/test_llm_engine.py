"""The process-wide LLM engine against a real OpenAI-compatible server on 127.0.0.1: one
limit shared by every client and thread, chains without barriers, backoff without a
slot, exceptions with their own type, outages told apart, vision token estimates."""

import asyncio
import base64
import io
import threading
import time

import pytest
from PIL import Image

from vpo_core.config import LLMConfig
from vpo_core.errors import StageFailed, TransientError
from vpo_core.llm.client import LLMClient, LLMRequest, raise_if_outage
from vpo_core.llm.tokens import estimate_tokens, image_tokens
from vpo_core.testing.openai_server import FakeOpenAI, ServerThread


def _cfg(srv: ServerThread, **kw) -> LLMConfig:
    base = {"model": "openai/fake-judge", "api_base": srv.api_base, "timeout_s": 2.0,
            "retry_base_s": 0.01, "max_retries": 4, "concurrency": 4, "call_store": "off"}
    return LLMConfig(**(base | kw))


def _requests(n: int, prefix: str = "question") -> list[LLMRequest]:
    return [LLMRequest(f"r{i}", [{"role": "user", "content": f"{prefix} {i}"}])
            for i in range(n)]


def test_clients_in_threads_share_one_limit() -> None:
    fake = FakeOpenAI(latency=0.05)
    with ServerThread(fake) as srv:
        cfg = _cfg(srv)
        outs: dict[int, list] = {}
        threads = [threading.Thread(target=lambda i=i: outs.update(
            {i: LLMClient(cfg).run(_requests(12, f"thread {i}"))})) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(r.ok for rs in outs.values() for r in rs) and len(outs) == 3
    assert sum(fake.requests.values()) == 36
    assert fake.max_in_flight == 4            # three clients, one gate of 4


async def _gen_then_crit(i: int, ask) -> tuple[str, str]:
    first = await ask(LLMRequest(f"g{i}", [{"role": "user", "content": f"gen {i}"}]))
    second = await ask(LLMRequest(f"c{i}", [{"role": "user", "content": f"crit {i}"}]))
    return first.status, second.status


def test_a_slow_call_holds_back_only_its_own_row() -> None:
    fake = FakeOpenAI(latency=0.05, slow={"gen 0": 1.5})
    with ServerThread(fake) as srv:
        start = time.monotonic()
        results = LLMClient(_cfg(srv, concurrency=4)).run_chains(range(4), _gen_then_crit)
    assert results == [("ok", "ok")] * 4
    arrived = dict(zip(fake.requests, fake.arrivals, strict=True))
    assert all(arrived[f"crit {i}"] - start < 0.9 for i in (1, 2, 3))   # no phase barrier
    assert arrived["crit 0"] - start >= 1.5


def test_queued_calls_go_in_step_order() -> None:
    fake = FakeOpenAI(latency=0.02)
    with ServerThread(fake) as srv:
        LLMClient(_cfg(srv, concurrency=1)).run_chains(range(3), _gen_then_crit)
    assert list(fake.requests) == ["gen 0", "gen 1", "gen 2", "crit 0", "crit 1", "crit 2"]


def test_exception_in_a_chain_reaches_the_caller_as_raised() -> None:
    with ServerThread(FakeOpenAI()) as srv:
        client = LLMClient(_cfg(srv))

        async def chain(i: int, ask) -> str:
            result = await ask(_requests(1, f"row {i}")[0])
            if i == 3:
                raise ValueError(f"row {i} has no usable answer")
            return result.text

        with pytest.raises(ValueError, match="row 3 has no usable answer"):
            client.run_chains(range(6), chain)

        async def inside_a_running_loop() -> list:  # e.g. an async flow calling a stage
            return client.run(_requests(2))

        assert all(r.ok for r in asyncio.run(inside_a_running_loop()))


def test_backoff_frees_its_slot() -> None:
    fake = FakeOpenAI(latency=0.05, fault_rate=0.4, faults=("rate_limit",), retry_after=2.0,
                      seed=3)
    with ServerThread(fake) as srv:
        start = time.monotonic()
        results = LLMClient(_cfg(srv, concurrency=2)).run(_requests(12))
    assert all(r.ok for r in results)
    backed_off = [r for r in results if r.attempts > 1]
    assert len(backed_off) >= 2
    early = [a for a in fake.arrivals if a - start < 1.8]
    # while calls wait out their 2 s Retry-After, the two slots serve every other call
    assert len(early) >= 12
    assert fake.max_in_flight == 2


def test_backoff_is_capped() -> None:
    fake = FakeOpenAI(fault_rate=1.0, faults=("rate_limit",), retry_after=30.0)
    with ServerThread(fake) as srv:
        start = time.monotonic()
        [result] = LLMClient(_cfg(srv, max_retries=2, max_backoff_s=0.2)).run(_requests(1))
    assert result.status == "error:rate_limit" and result.attempts == 3
    assert time.monotonic() - start < 5          # not 2 x 30 s


def test_total_transient_outage_is_a_transient_error() -> None:
    fake = FakeOpenAI(fault_rate=1.0, faults=("server_error",))
    with ServerThread(fake) as srv:
        results = LLMClient(_cfg(srv, max_retries=1)).run(_requests(3))
    assert all(r.status == "error:server" and r.transient for r in results)
    assert "HTTP 500" in results[0].error and "The server had an error" in results[0].error
    with pytest.raises(TransientError, match="transient errors"):
        raise_if_outage(results, "sft-data shard 0 generation")


def test_permanent_error_stops_with_the_providers_message() -> None:
    with ServerThread(FakeOpenAI(api_key="sk-right")) as srv:
        results = LLMClient(_cfg(srv), api_key="sk-wrong").run(_requests(3))
    assert all(r.attempts == 1 for r in results)
    with pytest.raises(StageFailed, match="Incorrect API key provided"):
        raise_if_outage(results, "sft-data shard 0 generation")
    raise_if_outage([], "nothing asked")                     # no calls: no outage


def _png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_image_parts_count_as_openai_tiles() -> None:
    assert image_tokens(2048, 4096) == 1105                  # OpenAI's worked example
    assert image_tokens(1024, 1024) == 765 and image_tokens(512, 512) == 255
    assert image_tokens(4000, 4000, "low") == 85
    text = "x" * 400                                         # 100 tokens
    messages = [{"role": "user", "content": [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": _png(512, 512)}},
        {"type": "image_url", "image_url": {"url": _png(1024, 1024), "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/frame.jpg"}}]}]
    assert estimate_tokens(messages, 50) == 100 + 255 + 85 + 765 + 50


@pytest.mark.usefixtures("prefect_server")
def test_failed_calls_reach_the_flow_run_log_with_their_cause() -> None:
    """The engine's thread logs in the caller's run context, so the UI shows why."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    import tasks  # noqa: F401  (sets the vpo_core level, as every flow module does)

    with ServerThread(FakeOpenAI(api_key="sk-right")) as srv:
        @flow(name="llm-failure-demo")
        def demo() -> None:
            LLMClient(_cfg(srv), api_key="sk-wrong").run(_requests(1))

        state = demo(return_state=True)
    APILogHandler().flush()
    run_filter = LogFilter(flow_run_id=LogFilterFlowRunId(
        any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=run_filter)
    lines = [log.message for log in logs if log.name == "vpo_core.llm"]
    assert len(lines) == 1 and "call r0 failed" in lines[0]
    assert "HTTP 401" in lines[0] and "Incorrect API key provided" in lines[0]
    assert "sk-wrong" not in lines[0]
