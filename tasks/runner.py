"""One way to run a stage: its steps inline in this process, or as deployment runs on the
work pool the configuration's ``placement`` names; then the merge and the artifacts.

A step sent to a pool runs as a run of the ``vpo-step/<pool>`` deployment
(:mod:`flows.step`): the worker calls the same cached task with the same inputs, so the
parent and the worker share one cache key. A parent that finds the key in the result
store (the work directory, shared storage) makes no run at all; otherwise it submits the
run, waits with Prefect's own helper, and reads the worker's result from the store.
Runs are submitted with an idempotency key, so a parent killed while its runs were in
flight re-attaches to them when resumed instead of starting them again. A run that
crashes (its process or worker lost, killed, out of memory) is submitted again under the
next key, up to ``placement.retries`` times; one that fails on its input fails its stage
at once. Each run carries the parent's code version of the step, which the worker checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import FlowRunWaitTimeout
from prefect.filesystems import LocalFileSystem
from prefect.flow_runs import wait_for_flow_run
from prefect.futures import as_completed
from prefect.results import ResultStore
from prefect.serializers import JSONSerializer
from prefect.states import Cancelling
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic_core import to_jsonable_python

from tasks.artifacts import publish_stage, stats_markdown
from tasks.caching import (
    STEPS,
    refs_in,
    run_cached,
    stage_out_dir,
    step_code_version,
    step_key,
)
from vpo_core.config import PlacementConfig
from vpo_core.errors import StageFailed
from vpo_core.job_variables import step_job_variables
from vpo_core.stages import spec
from vpo_core.tables import read_table
from vpo_core.workdir import WorkDir

STEP_DEPLOYMENT = "vpo-step/{pool}"


@dataclass(frozen=True)
class Where:
    """Where a stage's steps run: ``pool`` None is inline, ``parallel`` steps at once."""

    pool: str | None = None
    parallel: int = 1
    deadline_s: float = 86400.0
    retries: int = 0

    @classmethod
    def of(cls, placement: PlacementConfig, stage: str, parallel: int = 1) -> Where:
        pool = getattr(placement, stage.replace("-", "_"))
        return cls(pool, placement.max_in_flight if pool else parallel, placement.deadline_s,
                   placement.retries)


def _dispatch_key(context: Any, parameters: dict[str, Any]) -> str:
    return step_key(STEPS[parameters["step"]], parameters["kwargs"])


def _submit(name: str, params: dict[str, Any], key: str, force: bool) -> Any:
    """A run of the step deployment, or the run already submitted for this key and work
    directory (a resumed parent re-attaches; another work directory with the same inputs
    on the same server gets its own run, whose result lands in its own store); a finished
    failed one is retried under a new key."""
    attempt = 0 if not force else time.time_ns()
    where = hashlib.sha256(params["work_dir"].encode()).hexdigest()[:12]
    while True:
        run = run_deployment(name, parameters=params, timeout=0, as_subflow=True,
                             job_variables=step_job_variables(params["stage"],
                                                              params["kwargs"]),
                             idempotency_key=f"{key}-{where}-{attempt}",
                             flow_run_name=f"{params['step']}-{key[:8]}")
        if run.state is None or not run.state.is_final() or run.state.is_completed():
            return run
        attempt += 1


# Failures of a step run that say nothing about its input: a new run may succeed.
INFRASTRUCTURE_MARKERS = ("OutOfMemoryError", "CUDA out of memory")


def infrastructure_failure(state: Any) -> bool:
    """A Crashed run (process killed, worker or pod lost, never scheduled) or one that ran
    out of device memory: worth a new run elsewhere, unlike a step failing on its input."""
    return state.is_crashed() or any(m in (state.message or "")
                                     for m in INFRASTRUCTURE_MARKERS)


# Prefect's wait follows the run's state events; it reads the run again at least this
# often (a crash reported while the events' websocket was down was never seen: the
# parent waited on a Crashed run).
RECHECK_S = 30


def _wait(run: Any, stage: str, name: str, pool: str, deadline_s: float) -> Any:
    """The run in a final state; cancelled, and its stage failed, past the deadline."""
    deadline = time.monotonic() + deadline_s
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(FlowRunWaitTimeout):
            return run_coro_as_sync(wait_for_flow_run(run.id, timeout=max(1, int(min(
                left, RECHECK_S)))))
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Cancelling(message="deadline passed"), force=True)
    raise StageFailed(f"{stage}: run {run.name} of {name} on pool {pool!r} did not finish "
                      f"within placement.deadline_s={deadline_s:.0f} s; cancelled")


@task(name="vpo-step-dispatch", cache_key_fn=_dispatch_key, persist_result=True,
      result_serializer="json")
def dispatch(step: str, stage: str, kwargs: dict[str, Any], pool: str, work_dir: str,
             force: bool, deadline_s: float, retries: int = 0) -> Any:
    """Run one step on ``pool`` (again after a crash, up to ``retries`` times) and return
    the result its worker stored."""
    name = STEP_DEPLOYMENT.format(pool=pool)
    key = step_key(STEPS[step], kwargs)
    params = {"step": step, "stage": stage, "kwargs": to_jsonable_python(kwargs),
              "work_dir": work_dir, "force": force,
              "code_version": step_code_version(STEPS[step])}
    crashed: list[str] = []
    while True:
        run = _wait(_submit(name, params, key, force), stage, name, pool, deadline_s)
        if run.state.is_completed():
            break
        ended = f"run {run.name} of {name} on pool {pool!r} ended {run.state.name}"
        if not infrastructure_failure(run.state) or len(crashed) >= retries:
            after = f" (after {len(crashed)} crashed: {', '.join(crashed)})" if crashed else ""
            raise StageFailed(f"{stage}: {ended}: {run.state.message}{after}")
        crashed.append(str(run.id))
        get_run_logger().warning("%s: %s (%s); new run %d of placement.retries=%d", stage,
                                 ended, run.state.message, len(crashed), retries)
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(WorkDir.at(work_dir)
                                                                   .results)),
                        serializer=JSONSerializer())
    return store.read(key).result


def _call(step: Task, work: WorkDir, force: bool, stage: str, kwargs: dict[str, Any],
          where: Where) -> tuple[Task, dict[str, Any]]:
    """The task to submit for one step and its parameters."""
    options = {"result_storage": work.results, "refresh_cache": force}
    if where.pool is None:
        kwargs = {**kwargs, "out_dir": str(stage_out_dir(step, work, stage, kwargs))}
        return step.with_options(**options), kwargs
    return (dispatch.with_options(name=f"{step.name}@{where.pool}", **options),
            {"step": step.name, "stage": stage, "kwargs": kwargs, "pool": where.pool,
             "work_dir": str(work.root), "force": force, "deadline_s": where.deadline_s,
             "retries": where.retries})


def run_steps(step: Task, work: WorkDir, force: bool, *, stage: str,
              calls: Sequence[dict[str, Any]], where: Where = Where(),
              describe: Callable[[Any], str] | None = None) -> list[Any]:
    """Run ``step`` once per kwargs of ``calls`` (a stage's shards), cached, inline or on
    ``where.pool``, at most ``where.parallel`` at once; results in the order of ``calls``.

    A progress artifact and a log line follow each finished step. A cached result whose
    files are gone or changed is computed again.
    """
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, key=f"{stage}-progress",
                                        description=f"{stage}: steps done")
    done = 0

    def finished(index: int, result: Any) -> None:
        nonlocal done
        done += 1
        update_progress_artifact(progress, 100.0 * done / max(1, len(calls)))
        logger.info("%s: %d/%d done%s%s", stage, done, len(calls),
                    f" on pool {where.pool!r}" if where.pool else "",
                    f" ({describe(result)})" if describe else "")

    results: list[Any] = [None] * len(calls)
    if where.pool is None and where.parallel <= 1:
        for i, kwargs in enumerate(calls):
            results[i] = run_cached(step, work, force, stage=stage, **dict(kwargs))
            finished(i, results[i])
        return results
    with ThreadPoolTaskRunner(max_workers=max(1, where.parallel)) as runner:
        futures = {}
        for i, kwargs in enumerate(calls):
            submitted, params = _call(step, work, force, stage, dict(kwargs), where)
            futures[runner.submit(submitted, parameters=params)] = i
        for future in as_completed(list(futures)):
            i = futures[future]
            results[i] = future.result()
            if any(not r.is_valid() for r in refs_in(results[i])):
                logger.warning("%s: cached outputs of step %d missing or changed; "
                               "recomputing", stage, i)
                submitted, params = _call(step, work, True, stage, dict(calls[i]), where)
                results[i] = submitted(**params)
            finished(i, results[i])
    return results


def run_step(step: Task, work: WorkDir, force: bool, *, stage: str, where: Where = Where(),
             **kwargs: Any) -> Any:
    """One step (a whole stage such as training), inline or on ``where.pool``."""
    if where.pool is None:
        return run_cached(step, work, force, stage=stage, **kwargs)
    return run_steps(step, work, force, stage=stage, calls=[kwargs], where=where)[0]


@dataclass(frozen=True)
class ShardedStage:
    """A stage cut into shards: one cached ``shard`` step per shard, then ``merge``.

    ``merge_input`` picks what the merge takes of a shard's result; ``describe`` says a
    shard's outcome in its log line. The sample-rows artifact shows the registry's
    summary columns of the stage's first output.
    """

    name: str
    shard: Task
    merge: Task
    merge_input: Callable[[Any], Any]
    describe: Callable[[Any], str]

    @property
    def table(self) -> str:
        return spec(self.name).outputs[0]

    @property
    def columns(self) -> tuple[str, ...]:
        return spec(self.name).summary


def run_sharded(stage: ShardedStage, work: WorkDir, force: bool, shards: list[dict[str, Any]],
                where: Where = Where(), summary: Callable[[dict, float], str] | None = None
                ) -> dict[str, Any]:
    """Shards (inline or on a pool) -> merge -> summary and sample-rows artifacts; the
    merge step's result (its output references and ``stats``)."""
    start = time.perf_counter()
    outs = run_steps(stage.shard, work, force, stage=stage.name, calls=shards, where=where,
                     describe=stage.describe)
    merged = run_cached(stage.merge, work, force, stage=stage.name,
                        shards=[stage.merge_input(o) for o in outs])
    refs = {k: v for k, v in merged.items() if k != "stats"}
    seconds = time.perf_counter() - start
    markdown = (summary(merged, seconds) if summary
                else stats_markdown(stage.name, merged["stats"], refs, seconds))
    publish_stage(stage.name, markdown,
                  read_table(refs[stage.table]).head(12).select(stage.columns).to_dicts())
    return merged
