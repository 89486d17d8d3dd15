"""The ``vpo-step`` flow: one step of a stage (a shard, or a whole training run) on the
worker of a work pool. Each pool has its deployment, ``vpo-step/<pool>`` (prefect.yaml);
the parent flow sends steps there when ``placement`` names the pool (tasks/runner.py).

The worker reads and writes the shared work directory. Where it mounts it at another
path than the parent sees, ``VPO_WORKER_WORK_DIR`` on the worker names that path: every
reference in the work directory is relative to it, so the cache keys are the same.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, get_type_hints

from prefect import flow
from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from tasks.caching import STEPS, run_cached
from vpo_core.stages import STAGES
from vpo_core.workdir import WORKER_ENV, activate

# The modules whose tasks a step can name (importing them fills tasks.caching.STEPS):
# every stage's, from the registry, and the preflight probe's.
TASK_MODULES = (*dict.fromkeys(s.steps_module for s in STAGES), "tasks.preflight")


def typed_inputs(step: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The JSON parameters of a run as the task's annotated types (config sections,
    DataRefs), so the worker's cache key equals the parent's."""
    hints = get_type_hints(step.fn)
    return {k: TypeAdapter(hints[k]).validate_python(v) if k in hints else v
            for k, v in kwargs.items()}


@flow(name="vpo-step", log_prints=True)
def step_flow(step: str, stage: str, kwargs: dict[str, Any], work_dir: str,
              force: bool = False) -> Any:
    """Run the stage step ``step`` (a task name such as ``render-shard``) with ``kwargs``
    in the shared work directory; the result goes to its result store."""
    for module in TASK_MODULES:
        importlib.import_module(module)
    work = activate(os.environ.get(WORKER_ENV) or work_dir)
    task = STEPS[step]
    return to_jsonable_python(run_cached(task, work, force, stage=stage,
                                         **typed_inputs(task, kwargs)))
