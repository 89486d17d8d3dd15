"""A Kubernetes work pool that holds up under a queue: `vpo check` fails a pool without a
concurrency limit, or whose pods may wait longer than its pod-watch timeout.

prefect-kubernetes' worker waits ``pod_watch_timeout_seconds`` for a Job's pod to start
and crashes the flow run after that. Without a pool concurrency limit every submitted
step becomes a Job at once, so the pods beyond the GPUs the cluster has stay Pending until
that timeout and their runs crash. With a limit, a pod still waits for its node (a
scale-up, a pull of a ~20 GB image): the timeout must cover that.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpo_core.preflight.findings import Finding

# A GPU node's scale-up plus a first pull of the project's image (tens of GB): what a pod
# may wait before it runs, even when the pool's limit keeps Jobs within the GPUs.
POD_START_S = 600


@dataclass(frozen=True)
class KubernetesPool:
    """The settings of a Kubernetes work pool that decide whether its runs survive a wait:
    its concurrency limit and the pod-watch timeout its job template gives a run (None:
    unset, prefect-kubernetes' default of 60 s applies)."""

    name: str
    concurrency_limit: int | None
    pod_watch_timeout_s: int | None


def check_kubernetes_pool(pool: KubernetesPool, field: str = "placement",
                          expected_wait_s: float = POD_START_S) -> list[Finding]:
    """Errors for an unset concurrency limit and a pod-watch timeout shorter than
    ``expected_wait_s``; one ok otherwise."""
    out = []
    if pool.concurrency_limit is None:
        out.append(Finding(
            "error", field, f"Kubernetes work pool {pool.name!r} has no concurrency limit: "
            "every step becomes a Job at once, and pods beyond the cluster's GPUs stay "
            "Pending until the pod-watch timeout crashes their runs",
            f"prefect work-pool set-concurrency-limit {pool.name} <GPUs (or pods) the "
            "cluster gives it>"))
    timeout = pool.pod_watch_timeout_s if pool.pod_watch_timeout_s is not None else 60
    if timeout < expected_wait_s:
        out.append(Finding(
            "error", field, f"Kubernetes work pool {pool.name!r}: pod_watch_timeout_seconds "
            f"is {timeout} s{' (unset: the worker default)' * (pool.pod_watch_timeout_s is None)}"
            f", shorter than the {expected_wait_s:.0f} s a pod may wait for its node and image",
            f"set pod_watch_timeout_seconds >= {expected_wait_s:.0f} in the pool's base job "
            "template (deployments/kubernetes-job-template.json: 900)"))
    if not out:
        out.append(Finding("ok", field, f"Kubernetes work pool {pool.name!r}: concurrency "
                           f"limit {pool.concurrency_limit}, pod-watch timeout {timeout} s"))
    return out
