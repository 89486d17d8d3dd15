"""The call store against a real server's request counter: every answer made once, errors
never replayed, keys that follow the request's content, a SIGKILLed run resumed with
only the missing calls, several processes on one SQLite file, and a real Redis."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vpo_core.config import LLMConfig
from vpo_core.llm.client import LLMClient, LLMRequest
from vpo_core.llm.store import SQLITE_FILE
from vpo_core.testing.openai_server import FakeOpenAI, ServerThread
from vpo_core.testing.redis_server import RedisServer

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
    if not RedisServer.installed():
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    with RedisServer(tmp_path) as url:
        yield url


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


# ------------------------------------------------------------------ what the key holds
class _Recording(FakeOpenAI):
    """The fake server, keeping each request's body (the parameters that reached it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.bodies: list[dict] = []

    def _completion(self, body: dict) -> dict:
        self.bodies.append(body)
        return super()._completion(body)


def test_two_endpoints_serving_one_model_name_never_share_answers(tmp_path: Path) -> None:
    first, second = FakeOpenAI(), FakeOpenAI()
    with ServerThread(first) as a, ServerThread(second) as b:
        LLMClient(_cfg(a), work_root=tmp_path).run(_requests(3))
        on_b = LLMClient(_cfg(b), work_root=tmp_path).run(_requests(3))
        assert _sent(first) == 3 and _sent(second) == 3      # b's model was asked too
        assert not any(r.cached for r in on_b)
        # another spelling of a's address is a's endpoint: answered from the store
        spelled = f"HTTP://127.0.0.1:{a.port}/v1/"
        again = LLMClient(_cfg(a, api_base=spelled), work_root=tmp_path).run(_requests(3))
    assert all(r.cached for r in again) and _sent(first) == 3


def test_per_sample_seeds_are_separate_calls_and_reach_the_server(tmp_path: Path) -> None:
    fake = _Recording(latency=0.2)                   # the K samples are in flight together
    messages = [{"role": "user", "content": "a cat playing piano"}]
    samples = [LLMRequest(f"s{k}", messages, temperature=0.9, top_p=0.9, seed=100 + k,
                          max_tokens=50) for k in range(4)]
    with ServerThread(fake) as srv:
        results = LLMClient(_cfg(srv), work_root=tmp_path).run(samples)
        assert _sent(fake) == 4 and not any(r.cached for r in results)
        assert sorted(b["seed"] for b in fake.bodies) == [100, 101, 102, 103]
        assert {(b["top_p"], b["temperature"], b["max_tokens"]) for b in fake.bodies} == \
            {(0.9, 0.9, 50)}
        again = LLMClient(_cfg(srv), work_root=tmp_path).run(samples + samples)
        assert _sent(fake) == 4 and all(r.cached for r in again)   # each seed's own answer
        same = [LLMRequest(f"t{k}", messages, temperature=0.9, top_p=0.9, seed=7)
                for k in range(3)]                   # same everything: one request
        LLMClient(_cfg(srv, call_store="off")).run(same)
    assert _sent(fake) == 5


def test_the_model_identity_is_in_the_key(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        for identity in ("sha256:aaa", "sha256:bbb", "sha256:aaa"):   # retrained, then back
            LLMClient(_cfg(srv), work_root=tmp_path, identity=identity).run(_requests(2))
    assert _sent(fake) == 4


# ------------------------------------------------------------------ a store that fails
def test_an_answer_sqlite_cannot_store_is_kept_and_logged(tmp_path: Path, caplog) -> None:
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        LLMClient(_cfg(srv), work_root=tmp_path).run(_requests(1))     # makes the file
        with sqlite3.connect(tmp_path / SQLITE_FILE) as db:            # every write fails
            db.execute("CREATE TRIGGER full BEFORE INSERT ON calls "
                       "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
        with caplog.at_level("WARNING", logger="vpo_core.llm"):
            results = LLMClient(_cfg(srv), work_root=tmp_path).run(_requests(5))
    assert all(r.ok and r.text for r in results) and _sent(fake) == 5
    assert [r.cached for r in results] == [True, False, False, False, False]
    assert _stored(tmp_path) == 1
    assert "could not be stored" in caplog.text and "disk is full" in caplog.text


def test_an_answer_redis_cannot_store_is_kept(tmp_path: Path, redis_url: str, caplog) -> None:
    import redis

    redis.Redis.from_url(redis_url).config_set("maxmemory", 1)   # noeviction: SET refused
    fake = FakeOpenAI()
    with ServerThread(fake) as srv, caplog.at_level("WARNING", logger="vpo_core.llm"):
        results = LLMClient(_cfg(srv, call_store=redis_url)).run(_requests(4))
    assert all(r.ok and r.text for r in results) and _sent(fake) == 4
    assert "could not be stored" in caplog.text and "maxmemory" in caplog.text


# ------------------------------------------------------------------ Redis shared by processes
@pytest.fixture
def black_hole():
    """A listening socket that never accepts: its backlog full, a connect hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        port = sock.getsockname()[1]
        fillers = []
        for _ in range(4):          # fill the accept queue: later SYNs go unanswered
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield f"redis://127.0.0.1:{port}/0"
        for filler in fillers:
            filler.close()


def _within(seconds: float, fn, *args):
    """``fn(*args)`` in a daemon thread: its result or exception, or a failed test if it
    has not ended after ``seconds`` (a hang fails the test instead of blocking the suite)."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} did not end within {seconds} s"
    return box.get("result", box.get("error"))


def test_a_black_holed_redis_fails_within_its_timeout(black_hole: str) -> None:
    from vpo_core.errors import TransientError, is_transient

    cfg = LLMConfig(model=MODEL, api_base="http://127.0.0.1:9/v1", call_store=black_hole,
                    call_store_connect_timeout_s=0.3, call_store_timeout_s=0.3,
                    call_store_retries=1)
    outcome = _within(60, LLMClient(cfg).run, _requests(1))
    assert isinstance(outcome, TransientError) and is_transient(outcome)
    message = str(outcome)
    assert black_hole in message and "2 attempt(s)" in message
    assert "judge.call_store_connect_timeout_s=0.3" in message
    assert "judge.call_store_timeout_s=0.3" in message


_SHARER = """
import sys, orjson
from vpo_core.config import LLMConfig
from vpo_core.llm.client import LLMClient, LLMRequest
api_base, url, n, claim = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
cfg = LLMConfig(model="openai/gpt-4o-mini", api_base=api_base, call_store=url,
                concurrency=8, timeout_s=30, call_store_claim_s=claim)
results = LLMClient(cfg).run(
    [LLMRequest(str(i), [{"role": "user", "content": f"question {i}"}]) for i in range(n)])
print(orjson.dumps([[r.ok, r.cached] for r in results]).decode())
"""


def _sharer(srv: ServerThread, redis_url: str, n: int, claim_s: float = 30.0
            ) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SHARER, srv.api_base, redis_url, str(n),
                             str(claim_s)], stdout=subprocess.PIPE, text=True)


def test_two_processes_sharing_redis_never_make_a_call_twice(redis_url: str) -> None:
    import orjson

    fake = FakeOpenAI(latency=0.1, latency_sigma=0.8)
    with ServerThread(fake) as srv:
        children = [_sharer(srv, redis_url, 40) for _ in range(2)]
        outputs = [orjson.loads(c.communicate(timeout=120)[0]) for c in children]
    assert [c.returncode for c in children] == [0, 0]
    assert all(ok for out in outputs for ok, _ in out)
    assert _sent(fake) == 40 and max(fake.requests.values()) == 1   # each call made once
    # each question answered by a request of one process, from the store in the other
    assert sum(cached for out in outputs for _, cached in out) == 40


def test_a_dead_claimants_claim_expires_and_the_waiter_calls(redis_url: str) -> None:
    fake = FakeOpenAI(slow={"question 0": 60.0})
    with ServerThread(fake) as srv:
        first = _sharer(srv, redis_url, 1, claim_s=1.0)
        deadline = time.time() + 60
        while _sent(fake) < 1:                    # its call is at the server: claimed
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.02)
        first.kill()
        first.wait()
        fake.slow.clear()
        [result] = LLMClient(_cfg(srv, call_store=redis_url, call_store_claim_s=1.0)).run(
            _requests(1))
    assert result.ok and not result.cached
    assert fake.requests["question 0"] == 2       # the dead one's, then the waiter's


# ------------------------------------------------------------------ preflight of the store
_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:45 / /shared rw,relatime - nfs4 filer:/export/vpo rw,vers=4.2
41 40 0:46 / /shared/local\\040disk rw,relatime - ext4 /dev/vdb rw
42 27 0:47 / /scratch rw,relatime - lustre 10.0.0.1@tcp:/fs rw
"""


def _plan(tmp_path: Path, work: Path, **sets: object):
    from vpo_core.config import load_config
    from vpo_core.preflight import Plan

    return Plan(load_config("cpu-tiny", {"work_dir": str(work), **sets}))


@pytest.mark.parametrize(("work", "level", "fstype"), [
    ("/shared/runs/a", "error", "nfs4"),              # not made yet: its nearest folder's
    ("/scratch/vpo", "error", "lustre"),
    ("/shared/local disk/vpo", "ok", "ext4"),         # a local disk mounted under the share
    ("/home/me/vpo", "ok", "ext4"),
])
def test_preflight_refuses_sqlite_on_a_network_file_system(tmp_path: Path, work: str,
                                                           level: str, fstype: str) -> None:
    from vpo_core.preflight.store import check_store

    table = tmp_path / "mountinfo"
    table.write_text(_MOUNTINFO)
    [finding] = check_store(_plan(tmp_path, Path(work)), Path(work), mountinfo=table)
    assert (finding.level, finding.field) == (level, "judge.call_store")
    assert fstype in finding.found
    if level == "error":
        assert "redis://" in finding.fix and "network file system" in finding.found


def test_preflight_pings_the_redis_store(tmp_path: Path, redis_url: str,
                                         black_hole: str) -> None:
    from vpo_core.config import Stage
    from vpo_core.preflight import Plan
    from vpo_core.preflight.store import check_store

    [up] = check_store(_plan(tmp_path, tmp_path, **{"judge.call_store": redis_url}),
                       tmp_path)
    assert up.level == "ok" and "PING" in up.found
    fast = {"judge.call_store": black_hole, "judge.call_store_connect_timeout_s": 0.2,
            "judge.call_store_timeout_s": 0.2, "judge.call_store_retries": 0}
    [down] = check_store(_plan(tmp_path, tmp_path, **fast), tmp_path)
    assert down.level == "error" and black_hole in down.found
    assert "judge.call_store_timeout_s=0.2" in down.found
    # no stage that calls the judge: nothing to check
    assert check_store(Plan(_plan(tmp_path, tmp_path, **fast).cfg, frozenset({Stage.render})),
                       tmp_path) == []


def test_the_cluster_preset_shares_a_redis_store() -> None:
    from vpo_core.config import load_config

    assert load_config("cluster").judge.call_store.startswith("redis://")


def test_many_rows_at_once_queue_for_redis_connections(redis_url: str) -> None:
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:      # 300 lookups at once, more than the pool holds
        results = LLMClient(_cfg(srv, call_store=redis_url, concurrency=16)).run(
            _requests(300))
    assert all(r.ok for r in results) and _sent(fake) == 300


def test_claims_renewed_during_long_calls_end_with_them(redis_url: str) -> None:
    import redis

    fake = FakeOpenAI(latency=0.6, latency_sigma=0.5)   # each call outlives several renewals
    with ServerThread(fake) as srv:
        client = LLMClient(_cfg(srv, call_store=redis_url, call_store_claim_s=0.15,
                                concurrency=16))
        results = _within(120, client.run, _requests(48))
    assert all(r.ok for r in results) and _sent(fake) == 48
    assert redis.Redis.from_url(redis_url).keys("vpo:llm:claim:*") == []   # all released
