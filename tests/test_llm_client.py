"""The LLM client against a real OpenAI-compatible HTTP server on 127.0.0.1, through both
transports: statuses, retries, Retry-After, concurrency, permanent errors."""

import pytest

from vpo_core.config import LLMConfig
from vpo_core.llm.client import LLMClient, LLMRequest
from vpo_core.testing.openai_server import FakeOpenAI, ServerThread

TRANSPORTS = ["litellm", "http"]


def _cfg(srv: ServerThread, transport: str, **kw) -> LLMConfig:
    base = {"model": "openai/fake-judge", "api_base": srv.api_base, "transport": transport,
            "timeout_s": 1.0, "retry_base_s": 0.01, "max_retries": 6, "concurrency": 8}
    return LLMConfig(**(base | kw))


def _requests(n: int) -> list[LLMRequest]:
    return [LLMRequest(f"r{i}", [{"role": "user", "content": f"question {i}"}])
            for i in range(n)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_answers_with_tokens(transport: str) -> None:
    with ServerThread(FakeOpenAI()) as srv:
        results = LLMClient(_cfg(srv, transport)).run(_requests(5))
    assert [r.id for r in results] == [f"r{i}" for i in range(5)]
    assert all(r.status == "ok" and r.attempts == 1 for r in results)
    assert results[0].text.startswith("Here is the prompt")
    assert results[0].model == "openai/fake-judge"
    assert results[0].prompt_tokens == 2 and results[0].completion_tokens > 5


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("fault", "status"), [
    ("rate_limit", "error:rate_limit"), ("server_error", "error:server"),
    ("hang", "error:timeout"), ("malformed", "error:server|error:malformed"),
    ("empty", "error:empty"),
])
def test_each_fault_becomes_a_status(transport: str, fault: str, status: str) -> None:
    fake = FakeOpenAI(fault_rate=1.0, faults=(fault,), hang_seconds=3, retry_after=0.01)
    with ServerThread(fake) as srv:
        [result] = LLMClient(_cfg(srv, transport, max_retries=1)).run(_requests(1))
    assert result.status in status.split("|")
    assert result.attempts == 2 and result.text is None        # transient: retried once


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_thirty_percent_faults_all_answered(transport: str) -> None:
    fake = FakeOpenAI(fault_rate=0.3, retry_after=0.01, hang_seconds=3, seed=1)
    with ServerThread(fake) as srv:
        results = LLMClient(_cfg(srv, transport)).run(_requests(40))
    assert all(r.ok for r in results)
    assert sum(r.attempts for r in results) == sum(fake.outcomes.values())
    assert sum(r.attempts > 1 for r in results) >= 5


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_retry_after_is_honoured(transport: str) -> None:
    fake = FakeOpenAI(fault_rate=1.0, faults=("rate_limit",), retry_after=0.6)
    with ServerThread(fake) as srv:
        [result] = LLMClient(_cfg(srv, transport, max_retries=2)).run(_requests(1))
    assert result.status == "error:rate_limit" and result.attempts == 3
    gaps = [b - a for a, b in zip(fake.arrivals, fake.arrivals[1:], strict=False)]
    assert min(gaps) >= 0.6                      # waited as the server asked, not 0.01 s


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_permanent_errors_fail_fast_and_hide_the_key(transport: str) -> None:
    canary = "sk-canary-0123456789"
    with ServerThread(FakeOpenAI(api_key="sk-the-right-one")) as srv:
        results = LLMClient(_cfg(srv, transport), api_key=canary).run(_requests(3))
    assert all(r.status == "error:auth" and r.attempts == 1 for r in results)
    assert "check the API key" in results[0].error
    assert canary not in results[0].error


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_concurrency_is_bounded(transport: str) -> None:
    fake = FakeOpenAI(latency=0.05)
    with ServerThread(fake) as srv:
        LLMClient(_cfg(srv, transport, concurrency=4)).run(_requests(30))
    assert fake.max_in_flight == 4
