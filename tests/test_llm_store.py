"""The call store against a real server's request counter: every answer made once, errors
never replayed, keys that follow the request's content, a SIGKILLed run resumed with
only the missing calls, several processes on one SQLite file, and a real Redis."""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vpo_core.config import LLMConfig
from vpo_core.llm.client import LLMClient, LLMRequest
from vpo_core.llm.store import SQLITE_FILE
from vpo_core.testing.openai_server import FakeOpenAI, ServerThread

MODEL = "openai/gpt-4o-mini"  # in litellm's price map: answers have a cost


def _cfg(srv: ServerThread, **kw) -> LLMConfig:
    base = {"model": MODEL, "api_base": srv.api_base, "timeout_s": 5.0, "retry_base_s": 0.01,
            "max_retries": 3, "concurrency": 4}
    return LLMConfig(**(base | kw))


def _requests(n: int, prefix: str = "question") -> list[LLMRequest]:
    return [LLMRequest(f"r{i}", [{"role": "user", "content": f"{prefix} {i}"}])
            for i in range(n)]


def _sent(fake: FakeOpenAI) -> int:
    return sum(fake.requests.values())


def _stored(work: Path) -> int:
    with sqlite3.connect(work / SQLITE_FILE) as db:
        return db.execute("SELECT count(*) FROM calls").fetchone()[0]


def test_an_identical_run_makes_no_request(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        first = LLMClient(_cfg(srv), work_root=tmp_path).run(_requests(10))
        assert _sent(fake) == 10 and not any(r.cached for r in first)
        again = LLMClient(_cfg(srv), work_root=tmp_path).run(_requests(10))
    assert _sent(fake) == 10                                  # nothing asked again
    assert all(r.cached and r.ok and r.attempts == 0 for r in again)
    assert [r.text for r in again] == [r.text for r in first]
    assert [r.cost for r in again] == [r.cost for r in first]    # what the store saved
    assert first[0].cost > 0 and _stored(tmp_path) == 10


def test_errors_are_not_stored(tmp_path: Path) -> None:
    fake = FakeOpenAI(fault_rate=1.0, faults=("server_error",))
    with ServerThread(fake) as srv:
        failed = LLMClient(_cfg(srv, max_retries=0), work_root=tmp_path).run(_requests(4))
        assert all(r.status == "error:server" for r in failed)
        fake.fault_rate = 0.0
        again = LLMClient(_cfg(srv), work_root=tmp_path).run(_requests(4))
    assert all(r.ok and not r.cached for r in again)
    assert _sent(fake) == 8


def test_the_key_follows_the_request_content(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        def run(n: int = 3, prefix: str = "question", **kw) -> int:
            before = _sent(fake)
            LLMClient(_cfg(srv, **kw), work_root=tmp_path).run(_requests(n, prefix))
            return _sent(fake) - before

        assert run() == 3
        assert run() == 0
        assert run(concurrency=9, timeout_s=9.0) == 0      # not sampling: same answers
        assert run(n=5) == 2                               # two new questions only
        assert run(prefix="template v2") == 3              # changed template (messages)
        assert run(temperature=0.7) == 3
        assert run(max_tokens=99) == 3
        assert run(seed=1) == 3
        assert run(model="openai/gpt-4o") == 3             # another judge model


_CHILD = """
import sys
from vpo_core.config import LLMConfig
from vpo_core.llm.client import LLMClient, LLMRequest
api_base, work = sys.argv[1], sys.argv[2]
cfg = LLMConfig(model="openai/gpt-4o-mini", api_base=api_base, concurrency=4, timeout_s=30)
LLMClient(cfg, work_root=work).run(
    [LLMRequest(str(i), [{"role": "user", "content": f"question {i}"}]) for i in range(40)])
"""


def test_a_killed_run_resumes_with_only_the_missing_calls(tmp_path: Path) -> None:
    fake = FakeOpenAI(latency=0.2)
    with ServerThread(fake) as srv:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, srv.api_base, str(tmp_path)])
        deadline = time.time() + 60
        while _sent(fake) < 14:
            assert child.poll() is None and time.time() < deadline, "child ended early"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        stored, sent_before = _stored(tmp_path), _sent(fake)
        assert 8 <= stored < 40
        results = LLMClient(_cfg(srv), work_root=tmp_path).run(_requests(40))
    assert all(r.ok for r in results) and sum(r.cached for r in results) == stored
    assert _sent(fake) - sent_before == 40 - stored            # only the missing calls
    assert max(fake.requests.values()) <= 2                    # in flight at the kill: twice
    assert sum(v == 2 for v in fake.requests.values()) <= 4    # at most `concurrency` of them


_WRITER = """
import sys
from vpo_core.config import LLMConfig
from vpo_core.llm.client import LLMClient, LLMRequest
api_base, work, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = LLMConfig(model="openai/gpt-4o-mini", api_base=api_base, concurrency=8, timeout_s=30)
results = LLMClient(cfg, work_root=work).run(
    [LLMRequest(str(i), [{"role": "user", "content": f"question {i}"}])
     for i in range(first, first + 60)])
assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
"""


def test_processes_share_one_sqlite_store(tmp_path: Path) -> None:
    fake = FakeOpenAI(latency=0.01)
    with ServerThread(fake) as srv:
        children = [subprocess.Popen([sys.executable, "-c", _WRITER, srv.api_base,
                                      str(tmp_path), str(first)]) for first in (0, 30, 60)]
        assert [c.wait(timeout=120) for c in children] == [0, 0, 0]
        assert _stored(tmp_path) == 120
        sent = _sent(fake)
        again = LLMClient(_cfg(srv), work_root=tmp_path).run(_requests(120))
    assert all(r.cached for r in again) and _sent(fake) == sent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path: Path):
    """A real Redis server (Debian's redis-server) on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.time() < deadline and proc.poll() is None, "redis did not start"
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait()


def test_redis_store_is_shared_by_work_directories(tmp_path: Path, redis_url: str) -> None:
    import redis

    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        cfg = _cfg(srv, call_store=redis_url)
        first = LLMClient(cfg, work_root=tmp_path / "machine-a").run(_requests(6))
        again = LLMClient(cfg, work_root=tmp_path / "machine-b").run(_requests(6))
        nowhere = LLMClient(cfg).run(_requests(6))            # no work directory at all
    assert _sent(fake) == 6
    assert all(r.cached for r in again + nowhere)
    assert [r.text for r in again] == [r.text for r in first]
    assert len(redis.Redis.from_url(redis_url).keys("vpo:llm:call:*")) == 6
    assert not (tmp_path / "machine-a" / SQLITE_FILE).exists()


def test_redis_password_comes_from_the_environment(monkeypatch) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="no credentials in the URL"):
        LLMConfig(call_store="redis://:hunter2@cache:6379/0")
    with pytest.raises(ValidationError, match="call_store"):
        LLMConfig(call_store="memcached://cache")
    monkeypatch.delenv("VPO_TEST_REDIS_PASSWORD", raising=False)
    cfg = LLMConfig(call_store="redis://127.0.0.1:1/0",
                    call_store_password_env="VPO_TEST_REDIS_PASSWORD")
    from vpo_core.errors import ConfigError

    with pytest.raises(ConfigError, match="VPO_TEST_REDIS_PASSWORD is not set"):
        LLMClient(cfg).run(_requests(1))
    assert os.environ.get("VPO_TEST_REDIS_PASSWORD") is None


def test_identical_requests_in_flight_are_sent_once() -> None:
    fake = FakeOpenAI(latency=0.2)
    with ServerThread(fake) as srv:
        twice = _requests(5) + _requests(5)                  # same questions, other rows
        results = LLMClient(_cfg(srv, call_store="off")).run(twice)
    assert _sent(fake) == 5 and all(r.ok for r in results)
    assert sum(r.cached for r in results) == 5
    assert [r.text for r in results[:5]] == [r.text for r in results[5:]]
