"""The prompt optimizer you can call: load a trained (or any) causal LM and rewrite queries
with the optimizer instruction it was trained on.

``iterations`` > 1 re-optimises its own output (the paper's iterative refinement, Table
3): the prompt of round i is the query of round i + 1.

Sampling is reproducible per row, whatever else is in the batch: each sequence draws its
tokens from its own ``torch.Generator`` (:class:`RowSampler`), seeded by what identifies
it (the seed, the query, the sample index, the round). So the same query gives the same
prompts alone, in a batch of strangers, in any shard and in any order, and many queries
can share one ``generate`` call (left padding) without changing anyone's samples.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from vpo_core.errors import ConfigError
from vpo_core.models import bundled
from vpo_core.progress import Progress
from vpo_core.prompts.templates import optimizer_messages

DEVICES = "auto, cpu, cuda or cuda:N"
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Sampling:
    """How the optimizer decodes: greedy when temperature is 0. ``repetition_penalty``
    (> 1 discourages tokens the answer already has) and ``no_repeat_ngram_size`` (no n-gram
    twice in the answer) count the answer's own tokens only, never the instruction's."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 192
    seed: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


@dataclass(frozen=True)
class Generation:
    """One generated prompt; ``truncated`` when it stopped at ``max_new_tokens`` instead of
    ending on its own (a cut-off prompt); token counts of the answer and of the prompt
    (instruction and query in the chat template)."""

    text: str
    truncated: bool
    tokens: int
    prompt_tokens: int = 0


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from some values, the same in every process and on every machine."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def resolve_model(model: str, models_dir: str | Path) -> str:
    """A folder or hub id; ``bundled:<name>`` is made once into ``models_dir``."""
    return bundled.resolve_model(model, models_dir)


def resolve_device(device: str = "auto") -> str:
    """``auto``: the first GPU when CUDA is available, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine "
                          "(use --device cpu or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"device {device!r}: expected {DEVICES}")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto``: bfloat16 on a GPU that supports it, float16 on an older GPU, float32 on
    the CPU (bf16 matmuls are slow there)."""
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def row_sampler(generators: Sequence[Any], temperature: float, top_p: float,
                candidates: int = 256) -> Any:
    """A logits processor that samples row i's next token with ``generators[i]`` and leaves
    only that token finite, so greedy decoding emits it.

    Transformers' sampling draws from the global RNG for the whole batch at once, so a row's
    tokens would depend on its neighbours; here they depend on the row's logits and its
    generator alone: one uniform draw per row and step, inverted through the row's
    cumulative distribution in vocabulary order. Temperature and top-p are applied here
    too (the nucleus: every token at least as likely as the one that brings the mass of
    the most likely tokens to ``top_p``), from a top-``candidates`` partial sort instead of
    a sort of the whole vocabulary at every step; ties are kept together, so the order a
    sort puts them in never matters.
    """
    import torch
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                     ) -> torch.FloatTensor:
            logp = torch.log_softmax(scores.double() / temperature, dim=-1)
            if top_p < 1.0:
                logp = logp.masked_fill(logp < _nucleus_floor(logp, top_p, candidates),
                                        float("-inf"))
            cdf = logp.exp().cumsum(dim=-1)
            u = torch.stack([torch.rand((), generator=g, device=g.device, dtype=torch.float64)
                             for g in generators]).to(scores.device)
            # side="right": the first token whose cumulative mass exceeds u * total, which
            # always has a non-zero probability (also when u == 0)
            pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True)
            pick = pick.clamp(max=scores.shape[-1] - 1)
            return torch.full_like(scores, float("-inf")).scatter_(1, pick, 0.0)

    return RowSampler()


def repetition_control(start: int, penalty: float, ngram: int, stop: Sequence[int]) -> Any:
    """A logits processor against loops in what is generated after position ``start``:
    a penalty on tokens already generated (as in CTRL: logits above 0 divided, below 0
    multiplied) and a ban on tokens that would repeat an n-gram. The prompt, and the
    padding between a batch's rows, are never counted (transformers' own processors count
    them, which would make a row's output depend on its neighbours' lengths); the stop
    tokens are never penalised, so an answer can still end."""
    import torch
    from transformers import LogitsProcessor

    keep = torch.tensor(sorted(t for t in set(stop) if t is not None), dtype=torch.long)

    class RepetitionControl(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                     ) -> torch.FloatTensor:
            made = input_ids[:, start:]
            if not made.shape[1]:
                return scores
            kept = scores[:, keep.to(scores.device)]
            if penalty != 1.0:
                seen = scores.gather(1, made)
                scores = scores.scatter(1, made, torch.where(seen > 0, seen / penalty,
                                                             seen * penalty))
            if ngram and made.shape[1] >= ngram:
                for row, tokens in enumerate(made.tolist()):
                    tail = tuple(tokens[len(tokens) - ngram + 1:])
                    banned = {tokens[i + ngram - 1] for i in range(len(tokens) - ngram + 1)
                              if tuple(tokens[i:i + ngram - 1]) == tail}
                    if banned:
                        scores[row, list(banned)] = float("-inf")
            scores[:, keep.to(scores.device)] = kept
            return scores

    return RepetitionControl()


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` start with in common."""
    return next((n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


def _nucleus_floor(logp: Any, top_p: float, candidates: int) -> Any:
    """Per row, the log-probability of the least likely token of the nucleus: from the top
    ``candidates`` tokens, or a full sort for the rows whose top does not reach ``top_p``."""
    import torch

    def floor(top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mass = top.exp().cumsum(dim=-1)
        last = torch.searchsorted(mass, torch.full_like(mass[:, :1], top_p))
        return top.gather(1, last.clamp(max=top.shape[-1] - 1)), mass[:, -1] < top_p

    out, flat = floor(logp.topk(min(candidates, logp.shape[-1]), dim=-1).values)
    if bool(flat.any()):
        out[flat] = floor(logp[flat].sort(dim=-1, descending=True).values)[0]
    return out


class Optimizer:
    """A causal LM that turns queries into video prompts.

    ``batch_size`` is the number of sequences per ``generate`` call; ``device`` and
    ``dtype`` default to the GPU in bfloat16 when there is one, the CPU in float32
    otherwise.
    """

    def __init__(self, model: str, batch_size: int = 8, device: str = "auto",
                 dtype: str = "auto") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.name = model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:  # Llama 3 has none; padding is masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype).to(
            self.device).eval()
        self.batch_size = batch_size
        eos = self.model.generation_config.eos_token_id
        self._stop = {self.tokenizer.eos_token_id,
                      *(eos if isinstance(eos, list) else [eos])} - {None}

    def _prompt(self, query: str) -> list[int]:
        return self._tokens(optimizer_messages(query))

    def _tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]

    def generate(self, queries: Sequence[str], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        """One prompt per query (a query may repeat: one row each), ``batch_size`` rows per
        ``generate`` call, rows of similar length together. Greedy at temperature 0;
        otherwise row i samples with ``seeds[i]``, so its prompt does not depend on the
        other rows."""
        return self.generate_chats([optimizer_messages(q) for q in queries], sampling, seeds)

    def generate_chats(self, conversations: Sequence[list[dict[str, Any]]], sampling: Sampling,
                       seeds: Sequence[int] | None = None) -> list[Generation]:
        """:meth:`generate` for chat messages taken as they are (``vpo serve`` answers a
        caller that sends the instruction itself this way)."""
        if sampling.temperature > 0 and (seeds is None or len(seeds) != len(conversations)):
            raise ValueError("sampling needs one seed per query")
        prompts = [self._tokens(c) for c in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Generation | None] = [None] * len(prompts)
        progress = Progress(f"generate {len(prompts)} prompts", len(prompts))
        for lo in range(0, len(order), self.batch_size):
            rows = order[lo:lo + self.batch_size]
            done = self._batch([prompts[i] for i in rows], sampling,
                               [seeds[i] for i in rows] if sampling.temperature > 0 else None)
            for i, generation in zip(rows, done, strict=True):
                out[i] = generation
            progress.step(len(rows))
        return out  # type: ignore[return-value]

    @cached_property
    def _prefix(self) -> tuple[list[int], Any]:
        """The tokens every prompt starts with (chat template and instruction up to the
        query, found by comparing two prompts) and their KV cache for one row, computed
        once: each batch then prefills only its queries."""
        import torch
        from transformers import DynamicCache

        a = self._prompt("a cat")
        ids = a[:_common_length(a, self._prompt("the sea"))]
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            self.model(input_ids=torch.tensor([ids], device=self.device), past_key_values=cache,
                       use_cache=True)
        return ids, cache

    def _batch(self, prompts: list[list[int]], sampling: Sampling,
               seeds: list[int] | None) -> list[Generation]:
        """One ``generate`` call: the shared prefix comes from its cache, the rest of each
        prompt follows it with padding in between (masked out; positions come from the
        mask), so a row computes the same whatever its neighbours."""
        import torch
        from transformers import LogitsProcessorList

        tok = self.tokenizer
        prefix, prefix_cache = self._prefix
        # rows share the whole prefix unless a query merged with its last tokens
        n = min(min(_common_length(p, prefix) for p in prompts), min(map(len, prompts)) - 1)
        shared = prefix[:n]
        rests = [p[n:] for p in prompts]
        width = max(map(len, rests))
        pad = tok.pad_token_id
        ids = torch.tensor([shared + [pad] * (width - len(r)) + r for r in rests],
                           device=self.device)
        mask = torch.tensor([[1] * len(shared) + [0] * (width - len(r)) + [1] * len(r)
                             for r in rests], device=self.device)
        processors = LogitsProcessorList()
        if sampling.repetition_penalty != 1.0 or sampling.no_repeat_ngram_size:
            processors.append(repetition_control(ids.shape[1], sampling.repetition_penalty,
                                                 sampling.no_repeat_ngram_size, self._stop))
        if seeds is not None:
            processors.append(row_sampler(
                [torch.Generator(device=self.device).manual_seed(s % 2**63) for s in seeds],
                sampling.temperature, sampling.top_p))
        with torch.inference_mode():
            cache = None
            if shared:
                cache = copy.deepcopy(prefix_cache)
                cache.crop(len(shared) - len(prefix))   # removes that many tokens (<= 0)
                cache.batch_repeat_interleave(len(prompts))
            out_ids = self.model.generate(
                input_ids=ids, attention_mask=mask, past_key_values=cache,
                max_new_tokens=sampling.max_new_tokens, do_sample=False, temperature=None,
                top_p=None, top_k=None, logits_processor=processors, use_cache=True,
                pad_token_id=pad)
        out = []
        for prompt, row in zip(prompts, out_ids[:, ids.shape[1]:].tolist(), strict=True):
            ended = next((n for n, t in enumerate(row) if t in self._stop), None)
            tokens = row if ended is None else row[:ended]
            out.append(Generation(tok.decode(tokens, skip_special_tokens=True).strip(),
                                  ended is None, len(tokens), len(prompt)))
        return out

    def sample(self, queries: Sequence[str], k: int, sampling: Sampling,
               seeds: Sequence[int]) -> list[list[Generation]]:
        """``k`` sampled prompts for each query, query i's from ``seeds[i]`` alone (sample j
        uses ``stable_seed(seeds[i], j)``): the same (seed, query) gives the same samples in
        any batch or shard."""
        rows = [q for q in queries for _ in range(k)]
        row_seeds = [stable_seed(s, j) for s in seeds for j in range(k)]
        flat = self.generate(rows, sampling, row_seeds)
        return [flat[i * k:(i + 1) * k] for i in range(len(queries))]

    def optimize(self, queries: Sequence[str], iterations: int = 1,
                 sampling: Sampling | None = None) -> list[list[str]]:
        """For each query, its optimized prompt after each round (``iterations`` of them).
        When sampling, round r of a query is seeded by (seed, r, the query's text)."""
        return [[g.text for g in rounds]
                for rounds in self.optimize_generations(queries, iterations, sampling)]

    def optimize_generations(self, queries: Sequence[str], iterations: int = 1,
                             sampling: Sampling | None = None) -> list[list[Generation]]:
        """:meth:`optimize` with each round's :class:`Generation` (was it cut off?)."""
        sampling = sampling or Sampling()
        rounds: list[list[Generation]] = []
        current = list(queries)
        for r in range(iterations):
            seeds = [stable_seed(sampling.seed, r, q) for q in current]
            rounds.append(self.generate(current, sampling, seeds))
            current = [g.text for g in rounds[-1]]
        return [list(per_query) for per_query in zip(*rounds, strict=True)]


# One vLLM engine per process, model and dtype: loading one takes minutes on a GPU, and a
# worker samples many shards (a server answers many requests) with it.
_VLLM_ENGINES: dict[tuple[str, str], Any] = {}


class VLLMOptimizer:
    """:class:`Optimizer`'s ``generate`` and ``sample`` on vLLM (GPU machines): one call
    for all the queries given, a seed per request."""

    def __init__(self, model: str, dtype: str = "auto") -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ConfigError("vLLM is not installed (pip install vllm on a GPU "
                              "machine)") from exc
        if (model, dtype) not in _VLLM_ENGINES:
            _VLLM_ENGINES[model, dtype] = LLM(model=model, dtype=dtype, seed=0)
        self.name, self.llm = model, _VLLM_ENGINES[model, dtype]

    def _chat(self, conversations: Sequence[list[dict[str, Any]]], sampling: Sampling, n: int,
              seeds: Sequence[int] | None) -> list[list[Generation]]:
        from vllm import SamplingParams

        params = [SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=sampling.max_new_tokens,
                                 repetition_penalty=sampling.repetition_penalty,
                                 seed=None if seeds is None else seeds[i] % 2**31)
                  for i in range(len(conversations))]
        outs = self.llm.chat(list(conversations), params, use_tqdm=False)
        return [[Generation(c.text.strip(), c.finish_reason == "length", len(c.token_ids),
                            len(out.prompt_token_ids)) for c in out.outputs] for out in outs]

    def generate(self, queries: Sequence[str], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        """One prompt per query; greedy at temperature 0."""
        return self.generate_chats([optimizer_messages(q) for q in queries], sampling, seeds)

    def generate_chats(self, conversations: Sequence[list[dict[str, Any]]], sampling: Sampling,
                       seeds: Sequence[int] | None = None) -> list[Generation]:
        """:meth:`generate` for chat messages taken as they are."""
        sampled = sampling.temperature > 0
        return [g for [g] in self._chat(conversations, sampling, 1,
                                        seeds if sampled else None)]

    def sample(self, queries: Sequence[str], k: int, sampling: Sampling,
               seeds: Sequence[int]) -> list[list[Generation]]:
        """``k`` prompts per query (``n = k``), query i seeded with ``seeds[i]``."""
        return self._chat([optimizer_messages(q) for q in queries], sampling, k, seeds)
