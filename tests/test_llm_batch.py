"""Batch mode against the local server's real files and batches endpoints: chains form
one batch per step, answers enter the store at half price, expired or failed items go
the normal way, and a run killed while its batch is pending polls the same batch."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vpo_core.config import LLMConfig
from vpo_core.errors import ConfigError
from vpo_core.llm.client import LLMClient, LLMRequest
from vpo_core.testing.openai_server import FakeOpenAI, ServerThread

MODEL = "openai/gpt-4o-mini"


def _cfg(srv: ServerThread, **kw) -> LLMConfig:
    base = {"model": MODEL, "api_base": srv.api_base, "timeout_s": 5.0, "retry_base_s": 0.01,
            "max_retries": 3, "batch": True, "batch_poll_s": 0.05}
    return LLMConfig(**(base | kw))


def _requests(n: int, prefix: str = "question") -> list[LLMRequest]:
    return [LLMRequest(f"r{i}", [{"role": "user", "content": f"{prefix} {i}"}])
            for i in range(n)]


async def _two_steps(i: int, ask) -> tuple[str, str]:
    gen = await ask(LLMRequest(f"g{i}", [{"role": "user", "content": f"write {i}"}]))
    crit = await ask(LLMRequest(f"c{i}", [{"role": "user", "content": f"judge {gen.text}"}]))
    return gen.status, crit.status


def test_each_step_of_the_chains_is_one_batch(tmp_path: Path) -> None:
    fake = FakeOpenAI(batch_seconds=0.2)
    with ServerThread(fake) as srv:
        results = LLMClient(_cfg(srv), work_root=tmp_path).run_chains(range(6), _two_steps)
        assert results == [("ok", "ok")] * 6
        assert fake.endpoints["POST /v1/batches"] == 2 and fake.endpoints["POST /v1/files"] == 2
        assert sum(fake.requests.values()) == 0 and sum(fake.batch_items.values()) == 12
        [batched] = LLMClient(_cfg(srv), work_root=tmp_path).run(_requests(1))
        [direct] = LLMClient(_cfg(srv, batch=False), work_root=tmp_path / "other").run(
            _requests(1))
        assert batched.cost == pytest.approx(direct.cost / 2) and direct.cost > 0
        endpoints = dict(fake.endpoints)
        again = LLMClient(_cfg(srv), work_root=tmp_path).run_chains(range(6), _two_steps)
    assert again == results and dict(fake.endpoints) == endpoints   # all from the store
    assert not list((tmp_path / "llm" / "batches").glob("*.json"))  # collected, forgotten


@pytest.mark.parametrize(("outcome", "fault_rate", "direct"), [
    ("expired", 0.0, 5),        # half of 10 answered before the window closed
    ("failed", 0.0, 10),        # nothing answered
    ("completed", 0.5, None),   # some lines answered with a 500
])
def test_unanswered_items_go_the_normal_way(tmp_path: Path, outcome: str, fault_rate: float,
                                            direct: int | None) -> None:
    fake = FakeOpenAI(batch_seconds=0.1, batch_outcome=outcome, batch_fault_rate=fault_rate,
                      seed=2)
    with ServerThread(fake) as srv:
        results = LLMClient(_cfg(srv), work_root=tmp_path).run(_requests(10))
    assert all(r.ok for r in results)
    assert fake.endpoints["POST /v1/batches"] == 1
    sent = sum(fake.requests.values())
    assert sent == direct if direct is not None else 0 < sent < 10
    assert len({*fake.requests} & {f"question {i}" for i in range(10)}) == sent


_CHILD = """
import sys
from vpo_core.config import LLMConfig
from vpo_core.llm.client import LLMClient, LLMRequest
api_base, work = sys.argv[1], sys.argv[2]
cfg = LLMConfig(model="openai/gpt-4o-mini", api_base=api_base, batch=True, batch_poll_s=0.05)
LLMClient(cfg, work_root=work).run(
    [LLMRequest(str(i), [{"role": "user", "content": f"question {i}"}]) for i in range(8)])
"""


def test_a_run_killed_while_its_batch_is_pending_polls_the_same_batch(tmp_path: Path) -> None:
    fake = FakeOpenAI(batch_seconds=3.0)
    records = tmp_path / "llm" / "batches"
    with ServerThread(fake) as srv:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, srv.api_base, str(tmp_path)])
        deadline = time.time() + 60
        while fake.endpoints["GET /v1/batches"] < 2 or not list(records.glob("*.json")):
            assert child.poll() is None and time.time() < deadline, "child ended early"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        [record] = records.glob("*.json")
        assert "batch_1" in record.read_text()
        polls = fake.endpoints["GET /v1/batches"]
        results = LLMClient(_cfg(srv), work_root=tmp_path).run(_requests(8))
    assert all(r.ok for r in results)
    assert fake.endpoints["POST /v1/batches"] == 1 and fake.endpoints["POST /v1/files"] == 1
    assert fake.endpoints["GET /v1/batches"] > polls and list(fake.batches) == ["batch_1"]
    assert sum(fake.requests.values()) == 0
    assert not record.exists()


def test_batch_needs_an_openai_compatible_provider() -> None:
    with pytest.raises(ConfigError, match=r"judge\.batch"):
        LLMClient(LLMConfig(model="local/smollm2-135m-instruct", batch=True))
    with pytest.raises(ConfigError, match=r"judge\.batch"):
        LLMClient(LLMConfig(model="anthropic/claude-3-5-sonnet", batch=True))
