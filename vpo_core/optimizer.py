"""The prompt optimizer you can call: load a trained (or any) causal LM and rewrite queries
with the optimizer instruction it was trained on.

``iterations`` > 1 re-optimises its own output (the paper's iterative refinement, Table
3): the prompt of round i is the query of round i + 1. Sampling is seeded per query and
round, so the same call gives the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vpo_core.models import bundled
from vpo_core.progress import Progress
from vpo_core.prompts.templates import optimizer_messages


@dataclass(frozen=True)
class Sampling:
    """How the optimizer decodes: greedy when temperature is 0."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 192
    seed: int = 0


def resolve_model(model: str, models_dir: str | Path) -> str:
    """A folder or hub id; ``bundled:<name>`` is made once into ``models_dir``."""
    return bundled.resolve_model(model, models_dir)


class Optimizer:
    """A causal LM that turns queries into video prompts."""

    def __init__(self, model: str, batch_size: int = 8) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.name = model
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.batch_size = batch_size

    def _generate(self, queries: Sequence[str], sampling: Sampling, round_: int
                  ) -> list[str]:
        import torch

        tok, out = self.tokenizer, []
        for lo in range(0, len(queries), self.batch_size):
            batch = list(queries[lo:lo + self.batch_size])
            texts = [tok.apply_chat_template(optimizer_messages(q), tokenize=False,
                                             add_generation_prompt=True) for q in batch]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            sample = sampling.temperature > 0
            torch.manual_seed(sampling.seed + 1_000_003 * round_ + lo)
            with torch.inference_mode():
                ids = self.model.generate(
                    **enc, max_new_tokens=sampling.max_new_tokens, do_sample=sample,
                    temperature=sampling.temperature if sample else None,
                    top_p=sampling.top_p if sample else None, top_k=None, use_cache=True,
                    pad_token_id=tok.pad_token_id or tok.eos_token_id)
            new = ids[:, enc["input_ids"].shape[1]:]
            out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
        return out

    def sample(self, query: str, k: int, sampling: Sampling) -> list[str]:
        """``k`` sampled prompts for one query from one batched generate, seeded by
        ``sampling.seed`` alone (the same query and seed give the same samples in any
        batch or shard)."""
        import torch

        tok = self.tokenizer
        text = tok.apply_chat_template(optimizer_messages(query), tokenize=False,
                                       add_generation_prompt=True)
        enc = tok([text], return_tensors="pt", add_special_tokens=False)
        torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            ids = self.model.generate(
                **enc, max_new_tokens=sampling.max_new_tokens, do_sample=True,
                temperature=sampling.temperature, top_p=sampling.top_p, top_k=None,
                num_return_sequences=k, use_cache=True,
                pad_token_id=tok.pad_token_id or tok.eos_token_id)
        new = ids[:, enc["input_ids"].shape[1]:]
        return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]

    def optimize(self, queries: Sequence[str], iterations: int = 1,
                 sampling: Sampling | None = None) -> list[list[str]]:
        """For each query, its optimized prompt after each round (``iterations`` of them)."""
        sampling = sampling or Sampling()
        rounds: list[list[str]] = []
        current = list(queries)
        progress = Progress(f"optimize {len(current)} queries: rounds", iterations)
        for r in range(iterations):
            current = self._generate(current, sampling, r)
            rounds.append(current)
            progress.step()
        return [list(per_query) for per_query in zip(*rounds, strict=True)]
