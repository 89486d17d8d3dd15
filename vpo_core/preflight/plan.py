"""What a configuration will run, where, and how much it will make: the stages, the work
pool of each, and the counts (videos, judge calls, trainings) that checks size things by.
Counts are upper bounds: every sample is assumed to pass the text check and render."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from vpo_core.config import PipelineConfig, Stage, TrainConfig

ALL_STAGES = frozenset(Stage)


@dataclass(frozen=True)
class Plan:
    """A configuration and the stages it will run (the whole pipeline by default)."""

    cfg: PipelineConfig
    stages: frozenset[Stage] = ALL_STAGES

    def runs(self, stage: Stage) -> bool:
        return stage in self.stages

    def pool(self, stage: Stage) -> str | None:
        """The work pool the stage's steps run on; None when they run inline."""
        return getattr(self.cfg.placement, stage.name, None) if self.runs(stage) else None

    def pools(self) -> dict[str, list[Stage]]:
        """Each work pool the run sends steps to, with its stages."""
        out: dict[str, list[Stage]] = {}
        for stage in Stage:
            if pool := self.pool(stage):
                out.setdefault(pool, []).append(stage)
        return out

    def remote(self, stages: Iterable[Stage]) -> str | None:
        """The pool when every one of ``stages`` that runs is placed on a pool (then this
        machine's packages, caches and GPUs are not the ones used); None if any runs
        inline."""
        running = [s for s in stages if self.runs(s)]
        pools = {self.pool(s) for s in running}
        return None if not running or None in pools else ", ".join(sorted(pools))

    # ------------------------------------------------------------------ who needs what
    @property
    def judge_stages(self) -> list[Stage]:
        """Stages that call the judge (or, for vlm-checklist rewards, its endpoint)."""
        cfg = self.cfg
        wanted = [Stage.sft_data, Stage.text_feedback, Stage.evaluate]
        if cfg.curate.safety.llm_recheck:
            wanted.append(Stage.curate)
        if cfg.score.backend == "vlm-checklist":
            wanted.append(Stage.score)
        return [s for s in Stage if s in wanted and self.runs(s)]

    @property
    def video_stages(self) -> list[Stage]:
        """Stages that render and score videos (evaluate too with ``evaluate.video``)."""
        out = [s for s in (Stage.render, Stage.score) if self.runs(s)]
        if self.runs(Stage.evaluate) and self.cfg.evaluate.video:
            out.append(Stage.evaluate)
        return out

    def train_steps(self, stage: Stage, cfg: TrainConfig) -> int:
        """Optimizer steps of one training: SFT on the SFT split, DPO on at most one pair
        per DPO query."""
        if cfg.trl.get("max_steps", -1) > 0:
            return cfg.trl["max_steps"]
        split = self.cfg.curate.split
        examples = split.sft if stage == Stage.train_sft else split.dpo
        return max(1, math.ceil(math.ceil(examples / cfg.global_batch_size)
                                * cfg.trl.get("num_train_epochs", 3)))

    @property
    def trainings(self) -> list[tuple[Stage, TrainConfig]]:
        """The training stages that run, with their settings."""
        cfg = self.cfg
        return [(s, c) for s, c in ((Stage.train_sft, cfg.train_sft),
                                    (Stage.train_dpo, cfg.train_dpo)) if self.runs(s)]

    # ------------------------------------------------------------------ how much
    @property
    def optimizers(self) -> int:
        """Trained optimizers the evaluation compares: SFT and one DPO per iteration."""
        return 1 + self.cfg.iterations

    @property
    def eval_rounds(self) -> int:
        return max(1, self.cfg.evaluate.reoptimize_rounds)

    @property
    def videos(self) -> int:
        """Videos rendered: K per DPO query per iteration, and with ``evaluate.video`` one
        per held-out query for the original query, the few-shot teacher and each
        optimizer's every round."""
        cfg, split = self.cfg, self.cfg.curate.split
        n = split.dpo * cfg.sample.k * cfg.iterations if self.runs(Stage.render) else 0
        if self.runs(Stage.evaluate) and cfg.evaluate.video:
            n += split.eval * (2 + self.optimizers * self.eval_rounds)
        return n

    @property
    def llm_rows(self) -> int:
        """Rows of LLM-made text the run stores (SFT examples, samples, critiques,
        evaluation judgements)."""
        split, k = self.cfg.curate.split, self.cfg.sample.k
        return (split.sft + 2 * split.dpo * k * self.cfg.iterations
                + split.eval * (2 + self.optimizers * self.eval_rounds))

    @property
    def judge_calls(self) -> int:
        """Judge calls at most: safety re-checks, generate + critique + refine per SFT
        query, critique + refine per sample, and per evaluated prompt a judgement (plus
        the few-shot teacher's generation)."""
        cfg, split = self.cfg, self.cfg.curate.split
        calls = 0
        if Stage.curate in self.judge_stages:
            total = split.sft + split.dpo + split.eval
            calls += round(total * split.safety_share * cfg.curate.safety.recheck_oversample)
        if self.runs(Stage.sft_data):
            calls += 3 * split.sft
        if self.runs(Stage.text_feedback):
            calls += 2 * split.dpo * cfg.sample.k * cfg.iterations
        if self.runs(Stage.evaluate):
            calls += split.eval * (3 + self.optimizers * self.eval_rounds)
        return calls
