"""The ``vpo-step`` flow: one step of a stage (a shard, or a whole training run) on the
worker of a work pool. Each pool has its deployment, ``vpo-step/<pool>`` (prefect.yaml);
the parent flow sends steps there when ``placement`` names the pool (tasks/runner.py).

The worker reads and writes the shared work directory. Where it mounts it at another
path than the parent sees, ``VPO_WORKER_WORK_DIR`` on the worker names that path: every
reference in the work directory is relative to it, so the cache keys are the same.

Before running, the worker checks that its code is the parent's (a worker on another
commit would write results under keys the parent never reads). On a host whose workers
share GPUs (``vpo ui up --gpus N``, docs/cluster.md), ``VPO_GPU_LIMIT`` names a Prefect
global concurrency limit with one slot per device: the step holds one slot per device
its worker sees (``CUDA_VISIBLE_DEVICES``) while it runs, so a training step on the
all-devices worker waits for every device and shards wait for it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from typing import Any, get_type_hints

from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency
from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from tasks.caching import STEPS, run_cached, step_code_version
from vpo_core.errors import ConfigError, StageFailed
from vpo_core.stages import STAGES
from vpo_core.workdir import WORKER_ENV, activate

# The modules whose tasks a step can name (importing them fills tasks.caching.STEPS):
# every stage's, from the registry, and the preflight probe's.
TASK_MODULES = (*dict.fromkeys(s.steps_module for s in STAGES), "tasks.preflight")
GPU_LIMIT_ENV = "VPO_GPU_LIMIT"
# A killed step's slots come back when its lease ends (Prefect's minimum: 60 s).
LEASE_S = 60.0


class CodeVersionMismatch(StageFailed):
    """The worker runs other code than the parent that sent the step: never retried."""


def typed_inputs(step: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The JSON parameters of a run as the task's annotated types (config sections,
    DataRefs), so the worker's cache key equals the parent's."""
    hints = get_type_hints(step.fn)
    return {k: TypeAdapter(hints[k]).validate_python(v) if k in hints else v
            for k, v in kwargs.items()}


def check_code_version(step: str, theirs: str | None, ours: str) -> None:
    """Refuse a step sent by a parent running other code, naming both versions."""
    if theirs != ours:
        raise CodeVersionMismatch(
            f"{step}: this worker's code version is {ours}, the parent's is "
            f"{theirs or '(none sent: an older parent)'}; the two would not share results. "
            "Run the worker on the parent's code (redeploy the image the pool runs, or pull "
            "the same commit on the worker host and restart its worker), or the parent on "
            "the worker's.")


def visible_devices() -> list[str]:
    """The devices this worker's runs see (CUDA_VISIBLE_DEVICES), empty when unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [d for d in value.split(",") if d.strip()]


@contextlib.contextmanager
def gpu_slots(step: str) -> Iterator[None]:
    """Hold one slot of the host's GPU limit per visible device for the step's duration;
    nothing where no limit is configured (a laptop, a Kubernetes pod given its GPUs)."""
    limit = os.environ.get(GPU_LIMIT_ENV)
    if not limit:
        yield
        return
    devices = visible_devices()
    if not devices:
        raise ConfigError(f"{GPU_LIMIT_ENV}={limit} is set on this worker but "
                          "CUDA_VISIBLE_DEVICES is not: list the devices its runs use")
    logger = get_run_logger()
    logger.info("%s: waiting for %d slot(s) of %r (CUDA_VISIBLE_DEVICES=%s)", step,
                len(devices), limit, ",".join(devices))
    with concurrency(limit, occupy=len(devices), lease_duration=LEASE_S, strict=True):
        logger.info("gpu slots held: %d of %r", len(devices), limit)
        try:
            yield
        finally:
            logger.info("gpu slots released: %d of %r", len(devices), limit)


@flow(name="vpo-step", log_prints=True)
def step_flow(step: str, stage: str, kwargs: dict[str, Any], work_dir: str,
              force: bool = False, code_version: str | None = None) -> Any:
    """Run the stage step ``step`` (a task name such as ``render-shard``) with ``kwargs``
    in the shared work directory; the result goes to its result store."""
    for module in TASK_MODULES:
        importlib.import_module(module)
    task = STEPS[step]
    check_code_version(step, code_version, step_code_version(task))
    work = activate(os.environ.get(WORKER_ENV) or work_dir)
    with gpu_slots(step):
        return to_jsonable_python(run_cached(task, work, force, stage=stage,
                                             **typed_inputs(task, kwargs)))
