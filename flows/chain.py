"""The order of the stages, once: the pipeline runs it to the end, and a stage run on its
own (``vpo pairs``, a stage deployment) runs it up to itself to build what it needs, each
earlier stage exactly once, its outputs passed along."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from vpo_core.config import PipelineConfig, Stage
from vpo_core.memory import release
from vpo_core.progress import StageClock, expected_seconds

ROUND = (Stage.sample, Stage.text_feedback, Stage.render, Stage.score, Stage.pairs,
         Stage.train_dpo)


class Chain:
    """Runs stage flows in order, stopping before ``stop``; ``refs`` holds the newest
    output of each kind (queries, model, samples, ...), ``outputs`` every stage's."""

    def __init__(self, config: PipelineConfig, stop: Stage | None = None,
                 forced: frozenset[Stage] = frozenset()) -> None:
        self.config, self.stop, self.forced = config, stop, forced
        self.refs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.clock = StageClock([label for _, label in self.plan()],
                                expected_seconds(config.preset))

    def plan(self) -> list[tuple[Stage, str]]:
        """(stage, label) of every stage this chain runs, in order."""
        S, rounds = Stage, self.rounds()
        stages = [(S.curate, "curate"), (S.sft_data, "sft-data"), (S.train_sft, "train-sft")]
        for it in range(1, rounds + 1):
            tag = "" if rounds == 1 else f"-iter{it}"
            stages += [(stage, f"{stage}{tag}") for stage in ROUND]
        stages.append((S.evaluate, "evaluate"))
        return [(stage, label) for stage, label in stages if self.due(stage)]

    def rounds(self) -> int:
        return self.config.iterations if self.stop in (None, Stage.evaluate) else 1

    def due(self, stage: Stage) -> bool:
        """False once the stage to stop before is reached."""
        return self.stop is None or list(Stage).index(stage) < list(Stage).index(self.stop)

    def run(self, stage: Stage, flow_fn: Callable[..., dict], label: str | None = None,
            **inputs: Any) -> dict:
        label = label or str(stage)
        self.clock.begin(label)
        out = flow_fn(self.config, force=stage in self.forced, **inputs)
        end_of_stage()
        self.clock.end(label)
        self.outputs[label] = out
        self.refs.update(out)
        return out


def end_of_stage() -> None:
    """What a stage loaded goes when it ends: the in-process judge (reloaded in under a
    second by the next stage that calls it), garbage, and the allocator's free memory."""
    local = sys.modules.get("vpo_core.llm.local")
    if local is not None:
        local.unload_models()
    release()


def run_chain(config: PipelineConfig, stop: Stage | None = None,
              forced: frozenset[Stage] = frozenset()) -> Chain:
    """curate -> sft-data -> train-sft -> (sample -> text-feedback -> render -> score ->
    pairs -> train-dpo) x iterations -> evaluate, each round from the newest model."""
    from flows.curate import curate_flow
    from flows.evaluate import evaluate_flow
    from flows.pairs import pairs_flow
    from flows.render import render_flow
    from flows.sample import sample_flow
    from flows.score import score_flow
    from flows.sft_data import sft_data_flow
    from flows.text_feedback import text_feedback_flow
    from flows.train import train_dpo_flow, train_sft_flow

    chain, S = Chain(config, stop, forced), Stage
    r = chain.refs
    if not chain.due(S.curate):
        return chain
    chain.run(S.curate, curate_flow)
    if chain.due(S.sft_data):
        chain.run(S.sft_data, sft_data_flow, queries=r["queries"])
    if chain.due(S.train_sft):
        chain.run(S.train_sft, train_sft_flow, sft_examples=r["sft_examples"])
        r["models"] = ({"base": r["base"]} if config.evaluate.base else {}) | {
            "sft": r["model"]}
    rounds = chain.rounds()
    for it in range(1, rounds + 1):
        tag = "" if rounds == 1 else f"-iter{it}"
        for stage, fn, inputs in (
                (S.sample, sample_flow, lambda: {"queries": r["queries"], "model": r["model"]}),
                (S.text_feedback, text_feedback_flow, lambda: {"samples": r["samples"]}),
                (S.render, render_flow, lambda: {"critiques": r["critiques"]}),
                (S.score, score_flow, lambda: {"videos": r["videos"]}),
                (S.pairs, pairs_flow, lambda: {"critiques": r["critiques"],
                                               "rewards": r["rewards"]}),
                (S.train_dpo, train_dpo_flow, lambda: {"dpo_pairs": r["dpo_pairs"],
                                                       "sft_model": r["model"]})):
            if not chain.due(stage):
                return chain
            chain.run(stage, fn, f"{stage}{tag}", **inputs())
        r["models"]["dpo" if it == 1 else f"dpo-iter{it}"] = r["model"]
    if chain.due(S.evaluate):
        chain.run(S.evaluate, evaluate_flow, models=r["models"], queries=r["queries"])
    return chain
