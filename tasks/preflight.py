"""Preflight with Prefect: the lookups only a Prefect client can make (Secret blocks, work
pools and their workers, a probe run on a worker), the ``preflight`` task the pipeline
flow starts with, and the probe step a worker runs."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.caching import stage_task, step_code_version
from tasks.pools import kubernetes_pool
from tasks.runner import STEP_DEPLOYMENT
from vpo_core.config import PipelineConfig
from vpo_core.preflight import (
    Finding,
    PoolStatus,
    PreflightFailed,
    ProbeResult,
    Reach,
    errors,
    failure_message,
    markdown,
    run_checks,
)
from vpo_core.preflight.probe import answer_probe, clear_probe, read_answer, write_probe
from vpo_core.workdir import current

PROBE_STEP = "preflight-probe"


def load_secret(name: str) -> str:
    from prefect.blocks.system import Secret

    return Secret.load(name).get()


def inspect_pool(pool: str) -> PoolStatus:
    """The pool, its online workers and its ``vpo-step/<pool>`` deployment, from the
    server the run will use (no server: an error, as placed steps need one)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkerStatus
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return PoolStatus(error="PREFECT_API_URL is not set: without a server no worker can "
                          "take a step")
    try:
        with get_client(sync_client=True) as client:
            try:
                found = client.read_work_pool(pool)
            except ObjectNotFound:
                return PoolStatus()
            workers = client.read_workers_for_work_pool(pool)
            try:
                client.read_deployment_by_name(STEP_DEPLOYMENT.format(pool=pool))
                deployed = True
            except ObjectNotFound:
                deployed = False
    except Exception as exc:  # server down or unreachable
        return PoolStatus(error=f"{type(exc).__name__}: {exc}")
    online = sum(w.status == WorkerStatus.ONLINE for w in workers)
    return PoolStatus(True, online, len(workers), deployed,
                      kubernetes=kubernetes_pool(found))


def probe_pool(pool: str, work: Path, timeout_s: float) -> ProbeResult:
    """Send the probe step to ``pool`` as a run of ``vpo-step/<pool>`` and see whether its
    worker read the probe written here, and whether its answer is visible here."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    token = write_probe(work)
    try:
        run = run_deployment(STEP_DEPLOYMENT.format(pool=pool), timeout=timeout_s,
                             flow_run_name=f"{PROBE_STEP}-{token[:8]}",
                             parameters={"step": PROBE_STEP, "stage": "preflight",
                                         "kwargs": {"token": token}, "work_dir": str(work),
                                         "force": True,
                                         "code_version": step_code_version(probe_step)})
        if run.state is None or not run.state.is_final():
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(run.id, Cancelling(message="preflight gave up"),
                                          force=True)
            return ProbeResult(None, f"no worker finished the probe run {run.name} within "
                               f"{timeout_s:.0f} s (preflight.probe_timeout_s; busy, or slow "
                               "to start)")
        if not run.state.is_completed():
            return ProbeResult(False, f"probe run {run.name} ended {run.state.name}: "
                               f"{run.state.message}")
        answer = read_answer(work, token)
        if answer is None:
            return ProbeResult(False, f"the worker read the probe (run {run.name}), but its "
                               f"answer is not in {work}")
        return ProbeResult(True, f"a worker on {answer['host']} read the probe written here, "
                           "and its answer is visible here")
    finally:
        clear_probe(work, token)


def prefect_reach(config: PipelineConfig, offline: bool = False) -> Reach:
    """The checks' reach with this process's Prefect settings."""
    timeout = config.preflight.probe_timeout_s
    return Reach(offline=offline, load_secret=load_secret, inspect_pool=inspect_pool,
                 probe_pool=lambda pool, work: probe_pool(pool, work, timeout))


def run_preflight(config: PipelineConfig, offline: bool = False) -> list[Finding]:
    """Every check for the whole pipeline of ``config``."""
    return run_checks(config, reach=prefect_reach(config, offline))


@task(name="preflight", cache_policy=NO_CACHE)
def preflight(config: PipelineConfig) -> list[dict[str, Any]]:
    """Check the configuration before the first stage: the findings go to the
    ``preflight`` artifact and the log; any error fails the run here, in seconds."""
    findings = run_preflight(config)
    create_markdown_artifact(key="preflight", markdown=markdown(findings, "Preflight"),
                             description="what the configuration needs, checked before "
                             "the first stage")
    logger = get_run_logger()
    for f in findings:
        level = {"error": logger.error, "warning": logger.warning}.get(f.level, logger.info)
        level("preflight %s %s: %s", f.level, f.field, f.found)
    if errors(findings):
        raise PreflightFailed(failure_message(findings))
    return [asdict(f) for f in findings]


@stage_task(name=PROBE_STEP, retries=0)
def probe_step(token: str, out_dir: str) -> dict[str, str]:
    """On a pool's worker: answer the parent's probe in this worker's work directory."""
    return answer_probe(current().root, token)
