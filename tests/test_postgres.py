"""docs/cluster.md's server recipe, run: `vpo ui up --database postgresql+asyncpg://...`
starts a real Prefect server on a real PostgreSQL (a throwaway cluster made with Debian's
initdb / pg_ctl, password authentication, the password only in PGPASSWORD), with its pools,
deployments and workers. After `vpo curate`, a stage placed on a pool (sft-data on `cpu`,
each shard a `vpo-step/cpu` run on the worker) is started from the command line, its parent
process group is killed (SIGKILL) after the first shard has finished, and the same command
run again re-attaches to the step runs already made: one step run per shard, no LLM request
made twice, the runs recorded in PostgreSQL.

Without PostgreSQL's server binaries the module is skipped; `make system-deps` (apt-get,
root or sudo) installs them."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from vpo_core.config import LLMConfig
from vpo_core.curate.sources import bundled_queries
from vpo_core.prompts.templates import generation_messages
from vpo_core.tables import read_table

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "pg-test-password-4b1d"   # a throwaway cluster's, given only through PGPASSWORD
SHARDS, SHARD_SIZE = 3, 4


def _pg_bin() -> Path | None:
    """Folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb") and shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster in a temp folder on 127.0.0.1 and a random port, run as a
    non-root user (the `postgres` account when the tests run as root), with a `prefect`
    database; yields its URL without the password."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: run "
                    "`make system-deps` (apt-get install postgresql; root or sudo)")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="vpo-pg-"))
    if os.geteuid() == 0:                      # initdb refuses root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a `postgres` account to run PostgreSQL")
        os.chown(data, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    pwfile = data / "pw"
    pwfile.write_text(PASSWORD)
    if as_user:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    cluster, port = data / "cluster", _port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(cluster), "-U", "prefect",
                    f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(cluster), "-w", "-l",
                    str(data / "server.log"), "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        asyncio.run(_create_database(port))
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect", port
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(cluster), "-m", "fast",
                        "-w", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


async def _create_database(port: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="prefect",
                                 password=PASSWORD, database="postgres")
    try:
        await conn.execute("CREATE DATABASE prefect")
    finally:
        await conn.close()


async def _count(port: int, sql: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="prefect",
                                 password=PASSWORD, database="prefect")
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """`vpo ui up --database ...` (the CLI, as the guide runs it), stopped with `ui down`."""
    url, _ = postgres
    work = tmp_path_factory.mktemp("pg") / "work"
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    vpo = [sys.executable, "-m", "flows.cli"]
    up = subprocess.run([*vpo, "ui", "up", "--work-dir", str(work), "--port", str(_port()),
                         "--database", url], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((work / "ui" / "state.json").read_text())
    try:
        yield work, state
    finally:
        subprocess.run([*vpo, "ui", "down", "--work-dir", str(work)], cwd=ROOT, env=env,
                       capture_output=True, timeout=120)


def test_a_password_in_the_url_is_refused() -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    done = CliRunner().invoke(app, ["ui", "up", "--database",
                                    "postgresql+asyncpg://prefect:secret@db:5432/prefect"])
    assert done.exit_code == 1 and "PGPASSWORD" in done.output
    assert "secret" not in done.output


@pytest.fixture
def llm():
    """The judge: a real OpenAI-compatible server on 127.0.0.1 that the workers reach."""
    from vpo_core.testing.openai_server import FakeOpenAI, ServerThread

    with ServerThread(FakeOpenAI()) as srv:
        yield srv.fake, LLMConfig(model="openai/fake-judge", api_base=srv.api_base,
                                  timeout_s=10.0, retry_base_s=0.01, max_retries=6,
                                  parse_mode="strict", concurrency=2)


def test_a_placed_stage_killed_and_resumed_on_a_postgres_backed_server(
        server, postgres, llm, tmp_path: Path) -> None:
    work, state = server
    _, port = postgres
    fake, judge = llm
    assert state["database"].startswith("postgresql+asyncpg://prefect@127.0.0.1:")
    assert PASSWORD not in (work / "ui" / "state.json").read_text()
    fake.latency = 0.3                            # shards end seconds apart
    config = _config(tmp_path, judge)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_API_URL"] = state["api"]
    vpo = [sys.executable, "-m", "flows.cli"]
    curated = subprocess.run([*vpo, "curate", "--config", str(config)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert curated.returncode == 0, curated.stdout[-3000:] + curated.stderr[-3000:]
    command = [*vpo, "sft-data", "--config", str(config)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = tmp_path / "work" / "data" / "sft-data"
    deadline = time.monotonic() + 400
    while not list(shards.glob("shard-*/*.parquet")):
        assert proc.poll() is None and time.monotonic() < deadline, "ended before the kill"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)           # the parent; its step runs go on
    proc.wait()
    assert not list(shards.glob("merge-*/*.parquet"))

    fake.latency = 0.0
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    [merged] = shards.glob("merge-*/sft_examples.parquet")
    examples = read_table(merged)
    assert examples.height == SHARDS * SHARD_SIZE
    for query in examples["query"]:                          # no request made twice
        assert fake.requests[generation_messages(query)[0]["content"]] == 1
    runs = _step_runs(state)                                 # re-attached: one per shard
    assert len(runs) == SHARDS and all(r.state.is_completed() for r in runs), runs
    recorded = asyncio.run(_count(port, "SELECT count(*) FROM flow_run WHERE "
                                        "parameters->>'stage' = 'sft-data'"))
    assert recorded == SHARDS                                # in PostgreSQL


def _config(tmp_path: Path, judge: LLMConfig) -> Path:
    src = tmp_path / "queries.json"
    src.write_text(json.dumps(bundled_queries()[:200]))
    data = {"extends": "cpu-tiny", "work_dir": str(tmp_path / "work"),
            "judge": judge.model_dump(mode="json"),
            "curate": {"input": str(src), "safety": {"llm_recheck": False},
                       "split": {"sft": SHARDS * SHARD_SIZE, "dpo": 4, "eval": 4}},
            "sft_data": {"shard_size": SHARD_SIZE}, "placement": {"sft_data": "cpu"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _step_runs(state: dict) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: state["api"]}), \
            get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=["cpu"])))
    return [r for r in runs if r.parameters.get("stage") == "sft-data"]
