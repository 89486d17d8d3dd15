"""The stage registry: every stage of the pipeline declared once.

A *stage* is one step of the VPO recipe (curate, sft-data, ..., evaluate): a Prefect flow
with its own config section, input and output tables. A *step* is one cached Prefect task
of a stage (a shard, a merge, a training run); steps are what a work pool runs.

Everything else is derived from :data:`STAGES`: the pipeline's order (flows/chain.py),
the ``vpo <stage>`` commands, the step registry workers look up, the ``placement``
fields, the deployments prefect.yaml must declare (checked by a test), the stage-output
index's fingerprints and the code versions' extra files. Adding a stage is one
:class:`StageSpec` here, its ``vpo_core`` module, its ``tasks`` module and its flow.

No Prefect here (``vpo_core`` never imports it): flows and tasks are named by module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


@dataclass(frozen=True)
class Input:
    """A stage's input: flow parameter ``param`` takes output ``output`` of stage
    ``stage``; ``kind`` says what a user passes instead on the command line (a table name,
    or ``model`` for a model folder)."""

    param: str
    stage: str
    output: str
    kind: str
    needed: Callable[[dict[str, Any]], bool] | None = None   # on the config's JSON

    def needed_by(self, config: dict[str, Any]) -> bool:
        """False where the configuration makes the stage do without it."""
        return self.needed is None or self.needed(config)


@dataclass(frozen=True)
class StageSpec:
    """One stage, declared once.

    ``reads`` are the config sections besides its own that decide its result (they enter
    the output index's fingerprint); ``placement`` the kind of device its steps take when
    placed on a pool (None: never placed, it runs in the parent); ``per_round`` stages run
    once per DPO iteration; ``subprocess_modules`` and ``files`` are what its steps run or
    read outside their import graph (they enter its code version); ``summary`` the columns
    of its first output in its sample-rows artifact (curate and training publish their
    own).
    """

    name: str
    help: str
    outputs: tuple[str, ...]
    inputs: tuple[Input, ...] = ()
    reads: tuple[str, ...] = ()
    placement: Literal["cpu", "gpu", "gpus"] | None = None
    per_round: bool = False
    subprocess_modules: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    summary: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        """The Python name: config section, placement field, module names."""
        return self.name.replace("-", "_")

    @property
    def flow(self) -> str:
        """``module:function`` of its flow (prefect.yaml's entrypoint)."""
        module = "train" if self.name.startswith("train-") else self.key
        return f"flows/{module}.py:{self.key}_flow"

    @property
    def steps_module(self) -> str:
        """The ``tasks`` module declaring its steps."""
        return "tasks.training" if self.name.startswith("train-") else f"tasks.{self.key}"


def _in(param: str, stage: str, output: str | None = None, kind: str | None = None,
        needed: Callable[[dict[str, Any]], bool] | None = None) -> Input:
    output = output or param
    return Input(param, stage, output, kind or output, needed)


_TRAINING = ("vpo_core.training.__main__",)
_ACCELERATE = ("configs/accelerate/zero3.yaml",)

STAGES: tuple[StageSpec, ...] = (
    StageSpec("curate", "Curate user queries: normalise, filter, deduplicate, label "
              "safety, split.", outputs=("queries", "rejects"), reads=("judge",)),
    StageSpec("sft-data", "Build the SFT data: teacher prompts, judge critiques and "
              "refinements of the SFT split.", outputs=("sft_examples",),
              inputs=(_in("queries", "curate"),), reads=("judge", "checks"), placement="cpu",
              summary=("query", "generated", "judgement", "refined", "status")),
    StageSpec("train-sft", "Fine-tune the policy on the SFT data; a killed run resumes from "
              "its last checkpoint.", outputs=("model", "base"),
              inputs=(_in("sft_examples", "sft-data"),), reads=("policy",), placement="gpus",
              subprocess_modules=_TRAINING, files=_ACCELERATE),
    StageSpec("sample", "Sample K prompts per DPO query from the SFT model.",
              outputs=("samples",),
              inputs=(_in("queries", "curate"), _in("model", "train-sft")),
              placement="gpu", per_round=True,
              summary=("query", "sample_index", "prompt", "status")),
    StageSpec("text-feedback", "Critique every sample with the judge; refine the failing "
              "ones into text pairs.", outputs=("critiques", "text_pairs"),
              inputs=(_in("samples", "sample"),), reads=("judge", "checks"), placement="cpu",
              per_round=True,
              summary=("query", "prompt", "judgement", "refined", "refine_status")),
    StageSpec("render", "Render the samples that passed the text check.",
              outputs=("videos",), inputs=(_in("critiques", "text-feedback"),),
              reads=("text_feedback",), placement="gpu", per_round=True,
              summary=("prompt", "video_path", "contact_sheet", "status", "seconds")),
    StageSpec("score", "Score the rendered videos with the configured reward backend.",
              outputs=("rewards",), inputs=(_in("videos", "render"),), reads=("judge",),
              placement="gpu", per_round=True,
              files=("vpo_core/reward/visionreward_runner.py",),
              summary=("prompt", "score", "metrics", "status")),
    StageSpec("pairs", "Build the DPO pairs from text feedback and video rewards.",
              outputs=("dpo_pairs",),
              inputs=(_in("critiques", "text-feedback"), _in("rewards", "score")),
              reads=("checks",), per_round=True,
              summary=("query", "source", "chosen", "rejected", "chosen_score",
                       "rejected_score")),
    StageSpec("train-dpo", "DPO of the SFT model on preference pairs; the SFT model is also "
              "the reference.", outputs=("model",),
              inputs=(_in("dpo_pairs", "pairs"), _in("sft_model", "train-sft", "model")),
              reads=("policy",), placement="gpus", per_round=True,
              subprocess_modules=_TRAINING, files=_ACCELERATE),
    StageSpec("evaluate", "Judge the original queries, the few-shot teacher and the "
              "optimizers on the held-out split.",
              outputs=("eval_judgements", "eval_summary", "eval_report", "eval_chart",
                       "eval_videos", "eval_rewards"),
              inputs=(_in("queries", "curate",   # a prompt suite of its own needs none
                          needed=lambda c: c["evaluate"]["suite"] == "heldout"),),
              reads=("judge", "checks", "sample", "render", "score"), placement="gpu",
              files=("vpo_core/reward/visionreward_runner.py",),
              summary=("method", "round", "query", "prompt", "label", "status")),
)

BY_NAME: dict[str, StageSpec] = {s.name: s for s in STAGES}

Stage = StrEnum("Stage", [(s.key, s.name) for s in STAGES])
Stage.__doc__ = "Pipeline stages in run order; the value is the name on the command line."


def spec(stage: str) -> StageSpec:
    """The declaration of ``stage`` (a name such as ``train-sft``)."""
    return BY_NAME[str(stage)]


def upstream(stage: str) -> list[str]:
    """Every stage ``stage`` depends on, transitively, in run order."""
    seen: set[str] = set()
    todo = [i.stage for i in spec(stage).inputs]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [i.stage for i in spec(name).inputs]
    return [s.name for s in STAGES if s.name in seen]


def fingerprint(config: dict[str, Any], stage: str) -> str:
    """What identifies the outputs of ``stage`` under a configuration (a JSON dump of
    it): its section, the sections it reads, the seed, and its upstream stages'
    fingerprints. The stage-output index files outputs under it, so a stage run alone
    finds only inputs made under the current configuration."""
    s = spec(stage)
    sections = {name: config.get(name) for name in (s.key, *s.reads) if name in config}
    blob = {"stage": s.name, "seed": config.get("seed"), "sections": sections,
            "upstream": sorted({fingerprint(config, i.stage) for i in s.inputs})}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]
