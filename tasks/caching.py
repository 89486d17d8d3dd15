"""The Prefect conventions every stage task follows.

- Cache keys: the step's code version (its module's import graph, the data files and
  scripts it uses: :mod:`vpo_core.codeversion`) and its inputs, with every
  :class:`~vpo_core.tables.DataRef` keyed by its *content hash*. No location enters a
  key: ``out_dir`` (where a step writes) is left out, and
  tasks find the work directory's caches through :func:`vpo_core.workdir.current`, so a
  moved work directory keeps every cache hit.
- Results: persisted with the JSON serializer (no pickle) in the work directory's
  result store, so a finished task is a cache hit in any later run, from any process.
- A cache hit whose output files are gone or changed is recomputed (:func:`run_cached`).
- Retries with exponential backoff and jitter, for transient errors only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from vpo_core.codeversion import code_version, step_roots
from vpo_core.errors import is_transient
from vpo_core.stages import STAGES
from vpo_core.tables import DataRef
from vpo_core.workdir import WorkDir


def canonical(value: Any) -> Any:
    """What a cache key sees of a value: files by content, models by their JSON."""
    if isinstance(value, DataRef):
        return {"sha256": value.sha256, "table": value.table}
    if isinstance(value, BaseModel):
        return canonical(value.model_dump(mode="json"))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


# Task parameters that say where, not what: never part of a cache key or an output folder.
LOCATION_ARGS = frozenset({"out_dir"})
# Every stage step by task name: what a deployment run on a work pool looks up.
STEPS: dict[str, Task] = {}


def key_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs that decide a step's result, as its cache key sees them."""
    return canonical({k: v for k, v in inputs.items() if k not in LOCATION_ARGS})


def step_extras(module: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What the steps of tasks module ``module`` run or read outside their import graph,
    as the stage registry declares it: subprocess modules and files."""
    specs = [s for s in STAGES if s.steps_module == module]
    return (tuple(sorted({m for s in specs for m in s.subprocess_modules})),
            tuple(sorted({f for s in specs for f in s.files})))


@cache
def function_code_version(module: str, function: str) -> str:
    """The code version of step function ``function`` of tasks module ``module``."""
    extra_modules, files = step_extras(module)
    return code_version((*step_roots(module, function), *extra_modules), files, own=module)


def step_code_version(step: Task) -> str:
    """A step's code version: its module and the import graph of what the step uses
    (vpo_core.codeversion)."""
    return function_code_version(step.fn.__module__, step.fn.__name__)


def step_key(step: Task, inputs: dict[str, Any]) -> str:
    """The cache key of ``step`` called with ``inputs``: its code version and its inputs
    by content. The parent computes it to find what a worker stored."""
    return hash_objects(step_code_version(step), key_inputs(inputs), raise_on_failure=True)


@dataclass
class StepKey(CachePolicy):
    """Prefect's cache policy of every stage step: :func:`step_key`."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        return step_key(task_ctx.task, inputs)


def retry_transient(task: Task, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry rate limits, timeouts and 5xx; fail fast otherwise."""
    try:
        state.result()
    except Exception as exc:  # the task's exception, re-raised by result()
        return is_transient(exc)
    return False


def stage_task(*, name: str, retries: int = 3) -> Callable[[Callable[..., Any]], Task]:
    """The ``@task`` of a stage step: cached across runs on its code version and its
    inputs' content, JSON results, retries with exponential backoff and jitter for
    transient errors."""
    def register(fn: Callable[..., Any]) -> Task:
        step = task(
            name=name,
            cache_policy=StepKey(),
            persist_result=True,
            result_serializer="json",
            retries=retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=2),
            retry_jitter_factor=0.5,
            retry_condition_fn=retry_transient,
        )(fn)
        STEPS[name] = step
        return step
    return register


def refs_in(value: Any) -> list[DataRef]:
    """Every DataRef inside a task result."""
    if isinstance(value, DataRef):
        return [value]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs_in(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in refs_in(v)]
    return []


def stage_out_dir(step: Task, work: WorkDir, stage: str, kwargs: dict[str, Any]) -> Path:
    """Where :func:`run_cached` puts a step's outputs for these inputs (known in advance,
    so a parent flow can find what a deployment run on another worker wrote)."""
    return work.stage_dir(stage, step.name.removeprefix(f"{stage}-"), key_inputs(kwargs))


def run_cached(step: Task, work: WorkDir, force: bool = False, *, stage: str,
               **kwargs: Any) -> Any:
    """Call a stage task with the work directory's result store and an output folder
    named by what determines the result (see :meth:`WorkDir.stage_dir`).

    ``force`` recomputes on purpose. A cached result whose files have disappeared or
    changed since is recomputed too (Prefect alone would report it Cached).
    """
    kwargs["out_dir"] = str(stage_out_dir(step, work, stage, kwargs))
    options = {"result_storage": work.results}
    result = step.with_options(refresh_cache=force, **options)(**kwargs)
    stale = [r.path for r in refs_in(result) if not r.is_valid()]
    if stale:
        get_run_logger().warning("%s: cached outputs missing or changed (%s); recomputing",
                                 step.name, ", ".join(stale))
        result = step.with_options(refresh_cache=True, **options)(**kwargs)
    return result
