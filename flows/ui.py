"""``vpo ui up`` / ``vpo ui down``: a local Prefect server bound to 127.0.0.1, the ``cpu``
and ``gpu`` process work pools, every deployment of ``prefect.yaml``, and one worker per
pool, all started in the background; ``down`` stops exactly what ``up`` started.

``up(gpus=N)`` is a host with N GPUs: N ``gpu`` workers, worker i pinned to device i
(``CUDA_VISIBLE_DEVICES=i``), and one ``gpu-all`` worker that sees all N (training with
accelerate + ZeRO-3: ``placement.train_sft: gpu-all``). They share the devices through a
Prefect global concurrency limit of N slots that each step holds per device it sees
(:func:`flows.step.gpu_slots`): a training step waits for every device, shards take the
free ones.

State (pids, address, database, log files) is kept in ``<work_dir>/ui/state.json``. The
server's database lives in the work directory's PREFECT_HOME (SQLite), or in PostgreSQL
with ``--database``, so flow runs, artifacts and logs survive a restart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from vpo_core.memory import MALLOC_ENV
from vpo_core.workdir import WorkDir, prefect_env

ROOT = Path(__file__).resolve().parents[1]
POOLS = {"cpu": None, "gpu": 1}   # pool -> concurrency limit (one model per GPU worker)
ALL_GPUS_POOL = "gpu-all"         # up(gpus=N): one worker that sees every device
ALL_GPUS_FILE = ROOT / "deployments" / "gpu-all.yaml"
# glibc gives every tensor over 32 MB (a batch's logits) its own mmap and unmaps it when
# freed, so a CPU step faults its pages in again at each use: 40% of a training step's
# CPU time in system calls on this project's 2-core VM. One arena that keeps what it
# frees reuses the pages (benchmarks/README.md, "the allocator"). A worker's flow runs
# inherit its environment; a value the user set wins.
WORKER_MALLOC_ENV = MALLOC_ENV   # the vpo command's own (vpo_core.memory)


def _prefect() -> list[str]:
    return [sys.executable, "-m", "prefect"]


def ui_env(work: WorkDir, port: int, database: str | None = None) -> dict[str, str]:
    """Environment of the server, the CLI calls and the workers; ``database`` is the
    server's (see :func:`database_url`), else SQLite in the work directory's PREFECT_HOME."""
    base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    db = {"PREFECT_API_DATABASE_CONNECTION_URL": database_url(database)} if database else {}
    return {**base, **prefect_env(work, base), "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api", **db}


def database_url(url: str) -> str:
    """A PostgreSQL URL for Prefect's server (``postgresql+asyncpg://user@host:port/db``).
    A password in it would show in the process list and the shell's history: asyncpg
    reads it from ``PGPASSWORD`` (or ``~/.pgpass``) instead."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"--database {url!r}: expected postgresql+asyncpg://USER@HOST:PORT/"
                         "DB") from None
    if parsed.password is not None:
        raise ValueError("--database: leave the password out of the URL and export "
                         "PGPASSWORD (or use ~/.pgpass); the server reads it from there")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    if parsed.drivername != "postgresql+asyncpg":
        raise ValueError(f"--database: driver {parsed.drivername!r}; Prefect's server "
                         "needs postgresql+asyncpg://")
    return parsed.render_as_string(hide_password=False)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _state_file(work: WorkDir) -> Path:
    return work.root / "ui" / "state.json"


def _spawn(args: list[str], env: dict[str, str], log: Path) -> int:
    with open(log, "ab") as fh:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc.pid


def _run(args: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "ab") as fh:
        code = subprocess.call(args, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{' '.join(args[2:])} exited with {code}; see {log}:\n{tail}")


def gpu_limit_name() -> str:
    """The host's GPU limit: one per machine, as the devices are the machine's."""
    return f"gpus-{socket.gethostname()}"


def _set_gpu_limit(api: str, name: str, slots: int) -> None:
    """Create the global concurrency limit ``name`` with ``slots`` slots, or resize it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=slots))
        else:
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=slots, active=True))


def worker_plan(gpus: int, limit: str) -> dict[str, tuple[str, dict[str, str]]]:
    """The workers to start: name -> (pool, extra environment). ``gpus`` 0 is a machine
    without GPUs: one unpinned ``gpu`` worker, no limit."""
    if gpus <= 0:
        return {f"worker-{pool}": (pool, {}) for pool in POOLS}
    shared = {"VPO_GPU_LIMIT": limit}
    plan = {"worker-cpu": ("cpu", {})}
    plan |= {f"worker-gpu-{i}": ("gpu", {**shared, "CUDA_VISIBLE_DEVICES": str(i)})
             for i in range(gpus)}
    plan[f"worker-{ALL_GPUS_POOL}"] = (ALL_GPUS_POOL, {
        **shared, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus)))})
    return plan


def up(work: WorkDir, port: int = 4200, workers: bool = True,
       timeout_s: float = 120.0, database: str | None = None, gpus: int = 0
       ) -> dict[str, Any]:
    """Start server, pools, deployments and workers (``gpus`` > 0: one pinned ``gpu``
    worker per device and a ``gpu-all`` worker, sharing the host's GPU limit); return the
    state written, once every worker is online (a placed run started earlier fails
    preflight). The server keeps its runs in ``database`` (PostgreSQL) when given."""
    state_file = _state_file(work)
    if state_file.exists() and status(work)["server"]:
        return json.loads(state_file.read_text())
    logs = state_file.parent
    logs.mkdir(parents=True, exist_ok=True)
    work.create()
    env = ui_env(work, port, database)
    api = env["PREFECT_API_URL"]
    state: dict[str, Any] = {"url": f"http://127.0.0.1:{port}", "api": api, "pids": {},
                             "database": env.get("PREFECT_API_DATABASE_CONNECTION_URL",
                                                 "sqlite"),
                             "gpus": gpus, "gpu_limit": gpu_limit_name() if gpus else None}
    state["pids"]["server"] = _spawn([*_prefect(), "server", "start"], env,
                                     logs / "server.log")
    state_file.write_text(json.dumps(state, indent=2))
    deadline = time.monotonic() + timeout_s
    while not _healthy(api):
        if time.monotonic() > deadline:
            down(work)
            raise RuntimeError(f"the Prefect server did not answer on {api} within "
                               f"{timeout_s:.0f} s; see {logs / 'server.log'}")
        time.sleep(0.5)
    pools = dict(POOLS) | ({"gpu": gpus, ALL_GPUS_POOL: 1} if gpus else {})
    for pool, limit in pools.items():
        _run([*_prefect(), "work-pool", "create", pool, "--type", "process", "--overwrite"],
             env, logs / "setup.log")
        if limit:
            _run([*_prefect(), "work-pool", "set-concurrency-limit", pool, str(limit)], env,
                 logs / "setup.log")
    _run([*_prefect(), "--no-prompt", "deploy", "--all"], env, logs / "setup.log")
    if gpus:
        _set_gpu_limit(api, state["gpu_limit"], gpus)
        _run([*_prefect(), "--no-prompt", "deploy", "--all", "--prefect-file",
              str(ALL_GPUS_FILE)], env, logs / "setup.log")
    plan = worker_plan(gpus, state["gpu_limit"])
    if workers:
        for name, (pool, extra) in plan.items():
            args = [*_prefect(), "worker", "start", "--pool", pool]
            if gpus:            # one run at a time: the worker's device(s) are its model's
                args += ["--limit", "1", "--name", name.removeprefix("worker-")]
            state["pids"][name] = _spawn(args, {**WORKER_MALLOC_ENV, **env, **extra},
                                         logs / f"{name}.log")
    state_file.write_text(json.dumps(state, indent=2))
    if workers:
        expected = {pool: sum(p == pool for p, _ in plan.values()) for pool, _ in
                    plan.values()}
        _wait_for_workers(work, api, expected, time.monotonic() + timeout_s, logs)
    return state


def _wait_for_workers(work: WorkDir, api: str, expected: dict[str, int], deadline: float,
                      logs: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.preflight import inspect_pool

    with temporary_settings({PREFECT_API_URL: api}):
        while not all(inspect_pool(pool).online_workers >= n for pool, n in expected.items()):
            if time.monotonic() > deadline:
                down(work)
                raise RuntimeError(f"the workers did not come online; see the worker-*.log "
                                   f"files in {logs}")
            time.sleep(0.5)


def status(work: WorkDir) -> dict[str, Any]:
    """Which of the started processes are alive, and whether the server answers."""
    state_file = _state_file(work)
    if not state_file.exists():
        return {"server": False, "processes": {}}
    state = json.loads(state_file.read_text())
    alive = {}
    for name, pid in state["pids"].items():
        try:
            os.kill(pid, 0)
            alive[name] = True
        except OSError:
            alive[name] = False
    return {"server": _healthy(state["api"]), "url": state["url"], "processes": alive}


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def down(work: WorkDir, timeout_s: float = 15.0) -> list[str]:
    """Stop the workers and the server (whole process groups: Ctrl-C, then SIGKILL after
    ``timeout_s``); return the names of what was running."""
    state_file = _state_file(work)
    if not state_file.exists():
        return []
    pids = json.loads(state_file.read_text())["pids"]
    running = {name: pid for name, pid in pids.items() if _alive(pid)}
    for pid in running.values():
        os.killpg(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in running.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in running.values():
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    state_file.unlink()
    return sorted(running)
