"""The embedded judge and teacher: SmolLM2-135M-Instruct in this process, behind litellm.

Registered as the litellm custom provider ``local`` (model
``local/smollm2-135m-instruct``), so stages call it exactly as they call GPT-4o. The
model is loaded once per process. Concurrent requests are gathered into batches (up to
``batch_size``, waiting a few milliseconds for company) and generated together with
left padding: on two CPU cores a batch of 16 makes ~100 tokens/s, one request ~17.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import litellm
from litellm import CustomLLM, ModelResponse, Usage
from litellm.utils import custom_llm_setup

from vpo_core.models.bundled import BUNDLED_NAME, bundled_model_dir, gguf_file

LOCAL_PROVIDER = "local"
_WAIT_S = 0.02
_MIN_SHARED = 16   # tokens: a shorter common prefix is not worth its own forward pass


def _common_length(rows: list[list[int]]) -> int:
    """Length of the prefix every row shares."""
    n = 0
    for column in zip(*rows, strict=False):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


class LocalChatModel:
    """A causal LM with a chat template, generating for many conversations at once."""

    def __init__(self, cache_root: str | None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if cache_root:
            folder = bundled_model_dir(cache_root)
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModelForCausalLM.from_pretrained(folder)
        else:  # no work directory: read the GGUF directly (slower, nothing written)
            gguf = gguf_file()
            self.tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            self.model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        self.tokenizer.padding_side = "left"
        self.model.eval()
        self.lock = threading.Lock()

    def generate(self, conversations: list[list[dict]], max_new_tokens: int,
                 temperature: float, seed: int | None, repetition_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0) -> list[tuple[str, int, int]]:
        """(text, prompt tokens, completion tokens) per conversation; the repetition
        control counts each answer's own tokens (see vpo_core.optimizer)."""
        import torch
        from transformers import DynamicCache, LogitsProcessorList

        from vpo_core.optimizer import repetition_control

        tok = self.tokenizer
        prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
                   for c in conversations]
        # The judge's templates put the same long instructions and examples before each
        # row's text: that prefix is computed once and shared (padding goes after it).
        n = min(_common_length(prompts), min(map(len, prompts)) - 1)
        shared = prompts[0][:n] if len(prompts) > 1 and n >= _MIN_SHARED else []
        rests = [p[len(shared):] for p in prompts]
        width = max(map(len, rests))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.tensor([shared + [pad] * (width - len(r)) + r for r in rests])
        mask = torch.tensor([[1] * len(shared) + [0] * (width - len(r)) + [1] * len(r)
                             for r in rests])
        sample = temperature > 0
        processors = LogitsProcessorList()
        if repetition_penalty != 1.0 or no_repeat_ngram_size:
            processors.append(repetition_control(
                ids.shape[1], repetition_penalty, no_repeat_ngram_size,
                {tok.eos_token_id, tok.pad_token_id}))
        with self.lock, torch.inference_mode():
            cache = None
            if shared:
                cache = DynamicCache(config=self.model.config)
                self.model(input_ids=torch.tensor([shared]), past_key_values=cache,
                           use_cache=True, logits_to_keep=1)
                cache.batch_repeat_interleave(len(prompts))
            if sample and seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, past_key_values=cache,
                max_new_tokens=max_new_tokens, do_sample=sample,
                temperature=temperature if sample else None, top_p=None, top_k=None,
                logits_processor=processors, pad_token_id=pad)
        new = out[:, ids.shape[1]:]
        results = []
        for row, prompt in zip(new, prompts, strict=True):
            ends = (row == tok.eos_token_id).nonzero()
            length = int(ends[0]) if len(ends) else len(row)
            results.append((tok.decode(row[:length], skip_special_tokens=True).strip(),
                            len(prompt), length))
        return results


@dataclass
class _Pending:
    conversation: list[dict]
    key: tuple[Any, ...]
    future: asyncio.Future = field(repr=False)


class _Batcher:
    """Collects concurrent requests of one event loop and generates them together."""

    def __init__(self, model: LocalChatModel, batch_size: int) -> None:
        self.model, self.batch_size = model, batch_size
        self.pending: list[_Pending] = []
        self.worker: asyncio.Task | None = None

    async def generate(self, conversation: list[dict], *key: Any) -> tuple[str, int, int]:
        """One conversation's answer; ``key`` (budget, temperature, seed, repetition) is
        what requests batched together must share."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append(_Pending(conversation, key, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self.pending:
            await asyncio.sleep(_WAIT_S)
            key = self.pending[0].key
            batch = [p for p in self.pending if p.key == key][:self.batch_size]
            self.pending = [p for p in self.pending if p not in batch]
            try:
                results = await asyncio.to_thread(
                    self.model.generate, [p.conversation for p in batch], *key)
            except Exception as exc:  # the whole batch failed: every caller sees why
                for p in batch:
                    p.future.set_exception(exc)
                continue
            for p, result in zip(batch, results, strict=True):
                p.future.set_result(result)


class LocalProvider(CustomLLM):
    """litellm custom provider ``local``."""

    def __init__(self, cache_root: str | None, batch_size: int,
                 repetition: tuple[float, int] = (1.0, 0)) -> None:
        super().__init__()
        self.cache_root, self.batch_size, self.repetition = cache_root, batch_size, repetition
        self._model: LocalChatModel | None = None
        self._load_lock = threading.Lock()
        self._batchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def model(self) -> LocalChatModel:
        with self._load_lock:
            if self._model is None:
                self._model = LocalChatModel(self.cache_root)
        return self._model

    @staticmethod
    def _check(model: str) -> None:
        if model.split("/")[-1] != BUNDLED_NAME:
            raise ValueError(f"unknown local model {model!r}: the embedded one is "
                             f"local/{BUNDLED_NAME}")

    def _params(self, optional_params: dict) -> tuple[int, float, int | None, float, int]:
        """What a generation depends on (requests with the same are batched together)."""
        return (int(optional_params.get("max_tokens") or 256),
                float(optional_params.get("temperature") or 0.0),
                optional_params.get("seed"), *self.repetition)

    @staticmethod
    def _response(model: str, text: str, prompt: int, completion: int) -> ModelResponse:
        return ModelResponse(
            model=model, choices=[{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": text}}],
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion,
                        total_tokens=prompt + completion))

    def completion(self, model: str, messages: list, *args: Any, optional_params: dict,
                   **kwargs: Any) -> ModelResponse:
        self._check(model)
        text, prompt, completion = self.model.generate([messages],
                                                       *self._params(optional_params))[0]
        return self._response(model, text, prompt, completion)

    async def acompletion(self, model: str, messages: list, *args: Any,
                          optional_params: dict, **kwargs: Any) -> ModelResponse:
        self._check(model)
        model_obj = await asyncio.to_thread(lambda: self.model)
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = _Batcher(model_obj, self.batch_size)
        text, prompt, completion = await batcher.generate(messages,
                                                          *self._params(optional_params))
        return self._response(model, text, prompt, completion)


_PROVIDERS: dict[tuple[str | None, int, float, int], LocalProvider] = {}


def register_local_provider(cache_root: str | None, batch_size: int = 8,
                            repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0
                            ) -> LocalProvider:
    """Make ``local/smollm2-135m-instruct`` callable through litellm (idempotent), with
    the judge configuration's repetition control."""
    key = (cache_root, batch_size, repetition_penalty, no_repeat_ngram_size)
    provider = _PROVIDERS.get(key)
    if provider is None:
        loaded = next((p._model for p in _PROVIDERS.values() if p._model is not None), None)
        provider = _PROVIDERS[key] = LocalProvider(cache_root, batch_size,
                                                   (repetition_penalty, no_repeat_ngram_size))
        provider._model = loaded  # one copy of the weights per process
    litellm.custom_provider_map = [
        *[e for e in litellm.custom_provider_map if e.get("provider") != LOCAL_PROVIDER],
        {"provider": LOCAL_PROVIDER, "custom_handler": provider}]
    custom_llm_setup()
    return provider


def unload_models() -> None:
    """Drop the loaded model of every registered provider (the end of a stage): the next
    request loads it again, 0.4 s from the converted folder."""
    for provider in _PROVIDERS.values():
        with provider._load_lock:
            provider._model = None
        provider._batchers.clear()
