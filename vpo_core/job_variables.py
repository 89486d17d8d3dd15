"""The job variables a placed step's run carries on a Kubernetes pool
(deployments/kubernetes-job-template.json): which Secrets become its pod's environment and,
for a training run, how many GPUs it requests.

A pod gets only the Secrets its step's code reads: the judge's key where the judge (or the
vision checklist, which uses the judge's endpoint and key) is called, the Hub token where
gated base weights are loaded, and nothing else. The score step with VisionReward runs the
model's remote code and gets none. Process workers ignore these variables (their pool's
template does not name them), so the same runs work on `vpo ui up`.
"""

from __future__ import annotations

from typing import Any

JUDGE_SECRET = "vpo-judge"   # the key named by judge.api_key_env
HUB_SECRET = "vpo-hf"        # HF_TOKEN, for gated base weights (Llama 3)
_CALLS_THE_JUDGE = {"sft-data", "text-feedback", "evaluate"}
_LOADS_HUB_WEIGHTS = {"train-sft", "evaluate"}   # the base policy; later stages load ours
_TRAINING = {"train-sft", "train-dpo"}


def _field(section: Any, name: str) -> Any:
    """A setting of a step's config argument, as a model or as its JSON."""
    return section.get(name) if isinstance(section, dict) else getattr(section, name, None)


def step_secrets(stage: str, kwargs: dict[str, Any]) -> list[str]:
    """Names of the Kubernetes Secrets a step of ``stage`` called with ``kwargs`` needs."""
    needs = []
    vlm = stage == "score" and _field(kwargs.get("cfg"), "backend") == "vlm-checklist"
    if stage in _CALLS_THE_JUDGE or vlm:
        needs.append(JUDGE_SECRET)
    if stage in _LOADS_HUB_WEIGHTS:
        needs.append(HUB_SECRET)
    return needs


def step_job_variables(stage: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The job variables of one placed step run of ``stage`` called with ``kwargs``; they
    override the deployment's. A training run requests its ``num_processes`` GPUs (ZeRO-3
    over all of them); a shard keeps its deployment's ``gpus`` (1 on ``vpo-step/gpu``)."""
    variables: dict[str, Any] = {
        "env_from": [{"secretRef": {"name": name}} for name in step_secrets(stage, kwargs)]}
    gpus = _field(kwargs.get("train"), "num_processes") if stage in _TRAINING else None
    if gpus:
        variables["gpus"] = gpus
    return variables
