"""The Prefect conventions every stage task follows.

- Cache keys: the task's source, the source of the ``vpo_core`` modules doing its work
  (Prefect's TASK_SOURCE sees only the task body) and of the bundled data files it reads,
  and its inputs, with every :class:`~vpo_core.tables.DataRef` keyed by its *content
  hash*. No location enters a key: ``out_dir`` (where a step writes) is left out, and
  tasks find the work directory's caches through :func:`vpo_core.workdir.current`, so a
  moved work directory keeps every cache hit.
- Results: persisted with the JSON serializer (no pickle) in the work directory's
  result store, so a finished task is a cache hit in any later run, from any process.
- A cache hit whose output files are gone or changed is recomputed (:func:`run_cached`).
- Retries with exponential backoff and jitter, for transient errors only.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import TASK_SOURCE, CachePolicy, TaskSource
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from vpo_core.errors import is_transient
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
DATA_DIR = Path(__file__).resolve().parents[1] / "vpo_core" / "data"
# Every stage step by task name: what a deployment run on a work pool looks up.
STEPS: dict[str, Task] = {}


def key_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs that decide a step's result, as its cache key sees them."""
    return canonical({k: v for k, v in inputs.items() if k not in LOCATION_ARGS})


@dataclass
class ContentInputs(CachePolicy):
    """Key on the inputs, with file references by content hash."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        return hash_objects(key_inputs(inputs), raise_on_failure=True)


@cache
def source_digest(modules: tuple[str, ...], data: tuple[str, ...] = ()) -> str:
    """SHA-256 of the source files of some modules (every .py file of a package) and of
    some bundled data files (``vpo_core/data``)."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        module = importlib.import_module(name)
        if hasattr(module, "__path__"):  # a package: all its source files
            files = sorted(p for root in module.__path__ for p in Path(root).rglob("*.py"))
        else:
            files = [Path(module.__file__)]
        for path in files:
            digest.update(path.read_bytes())
    for name in sorted(data):
        digest.update(name.encode() + b"\0" + (DATA_DIR / name).read_bytes())
    return digest.hexdigest()


@dataclass
class CodeVersion(CachePolicy):
    """Key on the source of the library code a task calls and the data files it reads."""

    modules: tuple[str, ...] = field(default_factory=tuple)
    data: tuple[str, ...] = field(default_factory=tuple)

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        return source_digest(self.modules, self.data)


# Library modules every stage depends on: the data contract and its helpers.
COMMON_MODULES = ("vpo_core.schemas", "vpo_core.tables", "vpo_core.config")


def step_code_version(step: Task) -> str:
    """The version of the code a step runs: its task body and the library modules and data
    files of its :class:`CodeVersion` (what its cache key holds of code). A parent and a
    worker that disagree on it would not find each other's results."""
    from types import SimpleNamespace

    ctx = SimpleNamespace(task=step)
    policies = getattr(step.cache_policy, "policies", [step.cache_policy])
    parts = [p.compute_key(task_ctx=ctx, inputs={}, flow_parameters={}) or ""
             for p in policies if isinstance(p, CodeVersion | TaskSource)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def retry_transient(task: Task, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry rate limits, timeouts and 5xx; fail fast otherwise."""
    try:
        state.result()
    except Exception as exc:  # the task's exception, re-raised by result()
        return is_transient(exc)
    return False


def stage_task(*, name: str, modules: tuple[str, ...], data: tuple[str, ...] = (),
               retries: int = 3) -> Callable[[Callable[..., Any]], Task]:
    """The ``@task`` of a stage step: cached across runs on content, JSON results, retries
    with exponential backoff and jitter for transient errors. ``data`` names the bundled
    files of ``vpo_core/data`` the step's result depends on."""
    def register(fn: Callable[..., Any]) -> Task:
        step = task(
            name=name,
            cache_policy=TASK_SOURCE + ContentInputs()
            + CodeVersion(modules=COMMON_MODULES + modules, data=data),
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
