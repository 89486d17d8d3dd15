"""Preflight: before a run, check what its stages will need (keys, the judge, models,
packages, GPUs, work pools and workers, the work directory and its free space), so a
configuration that cannot run fails in seconds, not hours into the pipeline.

``run_checks(cfg, reach=...)`` returns :class:`Finding` s; errors stop a run, warnings do
not. The Prefect lookups (Secret blocks, pools, a probe run on a worker) are injected
through :class:`Reach` by ``tasks/preflight.py``.
"""

from vpo_core.preflight.checks import CHECKS, run_checks
from vpo_core.preflight.findings import (
    Finding,
    PoolStatus,
    PreflightFailed,
    ProbeResult,
    Reach,
    counts,
    errors,
    failure_message,
    markdown,
    text_table,
)
from vpo_core.preflight.plan import ALL_STAGES, Plan

__all__ = ["ALL_STAGES", "CHECKS", "Finding", "Plan", "PoolStatus", "PreflightFailed",
           "ProbeResult", "Reach", "counts", "errors", "failure_message", "markdown",
           "run_checks", "text_table"]
