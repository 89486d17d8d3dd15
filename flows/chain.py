"""The pipeline's composition of stages, in the registry's order (vpo_core/stages.py):
each stage flow gets its inputs from the outputs of the stages before it. Only the
pipeline composes stages; a stage run alone reads its inputs from the work directory's
index of stage outputs (vpo_core/stage_index.py)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from vpo_core.config import PipelineConfig, Stage
from vpo_core.memory import release
from vpo_core.progress import StageClock, expected_seconds
from vpo_core.stages import STAGES, StageSpec


def stage_flow(stage: StageSpec) -> Callable[..., dict]:
    """The flow function of a stage, from its declared entrypoint."""
    path, _, name = stage.flow.partition(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def plan(config: PipelineConfig, until: Stage | None = None) -> list[tuple[StageSpec, str, int]]:
    """(stage, label, round) of every stage the pipeline runs through ``until``: the
    stages before the per-round ones, then (sample -> ... -> train-dpo) x
    ``config.iterations``, each round from the newest model, then the rest."""
    first = next(i for i, s in enumerate(STAGES) if s.per_round)
    last = max(i for i, s in enumerate(STAGES) if s.per_round)
    rounds = config.iterations if until in (None, Stage.evaluate) else 1
    steps = [(s, s.name, 0) for s in STAGES[:first]]
    for it in range(1, rounds + 1):
        steps += [(s, s.name if rounds == 1 else f"{s.name}-iter{it}", it)
                  for s in STAGES[first:last + 1]]
    steps += [(s, s.name, 0) for s in STAGES[last + 1:]]
    if until is not None:
        steps = steps[:1 + max(i for i, (s, _, _) in enumerate(steps) if s.name == until)]
    return steps


def end_of_stage() -> None:
    """What a stage loaded goes when it ends: the in-process judge (reloaded in under a
    second by the next stage that calls it), garbage, and the allocator's free memory."""
    local = sys.modules.get("vpo_core.llm.local")
    if local is not None:
        local.unload_models()
    release()


class Chain:
    """Runs stage flows in order; ``refs`` holds the newest output of each kind (queries,
    model, samples, ...), ``outputs`` every stage's, labelled by stage and round."""

    def __init__(self, config: PipelineConfig, until: Stage | None = None,
                 forced: frozenset[Stage] = frozenset()) -> None:
        self.config, self.forced = config, forced
        self.plan = plan(config, until)
        self.refs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.clock = StageClock([label for _, label, _ in self.plan],
                                expected_seconds(config.preset))

    def run(self, stage: StageSpec, label: str, round_: int) -> None:
        """Run ``stage`` on the newest outputs of the stages it reads."""
        inputs = {i.param: self.refs[i.output] for i in stage.inputs}
        if stage.name == Stage.evaluate:
            inputs["models"] = self.refs["models"]
        self.clock.begin(label)
        out = stage_flow(stage)(self.config, force=Stage(stage.name) in self.forced,
                                **inputs)
        end_of_stage()
        self.clock.end(label)
        self.outputs[label] = out
        self.refs.update(out)
        if stage.name == Stage.train_sft:
            self.refs["models"] = ({"base": out["base"]} if self.config.evaluate.base
                                   else {}) | {"sft": out["model"]}
        if stage.name == Stage.train_dpo:
            self.refs["models"]["dpo" if round_ == 1 else f"dpo-iter{round_}"] = out["model"]


def run_chain(config: PipelineConfig, until: Stage | None = None,
              forced: frozenset[Stage] = frozenset()) -> Chain:
    """Run the pipeline's stages (:func:`plan`) in order."""
    chain = Chain(config, until, forced)
    for stage, label, round_ in chain.plan:
        chain.run(stage, label, round_)
    return chain
