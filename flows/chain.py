"""The pipeline's composition of stages, in the registry's order (vpo_core/stages.py):
each stage flow gets its inputs from the outputs of the stages before it. Only the
pipeline composes stages; a stage run alone reads its inputs from the work directory's
index of stage outputs (vpo_core/stage_index.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from vpo_core.config import PipelineConfig, Stage
from vpo_core.stages import STAGES, StageSpec


def stage_flow(stage: StageSpec) -> Callable[..., dict]:
    """The flow function of a stage, from its declared entrypoint."""
    path, _, name = stage.flow.partition(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


class Chain:
    """Runs stage flows in order through ``until`` (every stage when None); ``refs``
    holds the newest output of each kind (queries, model, samples, ...), ``outputs``
    every stage's, labelled by stage and round."""

    def __init__(self, config: PipelineConfig, until: Stage | None = None,
                 forced: frozenset[Stage] = frozenset()) -> None:
        self.config, self.until, self.forced = config, until, forced
        self.refs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.done = False

    def run(self, stage: StageSpec, label: str) -> None:
        """Run ``stage`` on the newest outputs of the stages it reads."""
        if self.done:
            return
        inputs = {i.param: self.refs[i.output] for i in stage.inputs}
        if stage.name == Stage.evaluate:
            inputs["models"] = self.refs["models"]
        out = stage_flow(stage)(self.config, force=Stage(stage.name) in self.forced,
                                **inputs)
        self.outputs[label] = out
        self.refs.update(out)
        if stage.name == Stage.train_sft:
            self.refs["models"] = ({"base": out["base"]} if self.config.evaluate.base
                                   else {}) | {"sft": out["model"]}
        self.done = stage.name == self.until


def run_chain(config: PipelineConfig, until: Stage | None = None,
              forced: frozenset[Stage] = frozenset()) -> Chain:
    """The stages before the per-round ones, then (sample -> ... -> train-dpo) x
    ``config.iterations``, each round from the newest model, then the rest; stops after
    ``until``."""
    chain = Chain(config, until, forced)
    first = next(i for i, s in enumerate(STAGES) if s.per_round)
    last = max(i for i, s in enumerate(STAGES) if s.per_round)
    for stage in STAGES[:first]:
        chain.run(stage, stage.name)
    rounds = config.iterations if until in (None, Stage.evaluate) else 1
    for it in range(1, rounds + 1):
        for stage in STAGES[first:last + 1]:
            chain.run(stage, stage.name if rounds == 1 else f"{stage.name}-iter{it}")
        if not chain.done:
            chain.refs["models"]["dpo" if it == 1 else f"dpo-iter{it}"] = chain.refs["model"]
    for stage in STAGES[last + 1:]:
        chain.run(stage, stage.name)
    return chain
