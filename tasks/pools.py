"""The settings of a Kubernetes work pool as the Prefect server holds them, for
:func:`vpo_core.preflight.kubernetes.check_kubernetes_pool`."""

from __future__ import annotations

from typing import Any

from vpo_core.preflight.kubernetes import KubernetesPool


def kubernetes_pool(work_pool: Any) -> KubernetesPool | None:
    """``work_pool`` (Prefect's WorkPool, as ``read_work_pool`` returns it) as data; None
    when it is not a Kubernetes pool."""
    if work_pool.type != "kubernetes":
        return None
    variables = (work_pool.base_job_template or {}).get("variables", {}).get("properties", {})
    timeout = variables.get("pod_watch_timeout_seconds", {}).get("default")
    return KubernetesPool(work_pool.name, work_pool.concurrency_limit,
                          int(timeout) if timeout is not None else None)
