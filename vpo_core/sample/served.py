"""The ``openai-server`` sample backend: K samples per query from a served policy
(``vllm serve`` on a cluster, ``vpo serve`` here) through the project's LLM engine, which
brings its concurrency limit, retries with backoff and the call store.

Each sample is its own request with the official sampling parameters (temperature, top-p,
max tokens from ``sample``) and a seed of its own, ``stable_seed(query seed, sample
index)``: the seeds ``Optimizer.sample`` gives its rows, so the K samples of a query never
collapse into one request (in flight or in the call store), and ``vpo serve`` draws exactly
the transformers backend's samples. The messages are the optimizer's
(:func:`optimizer_messages`, as the policy was trained); a server that applies the
instruction itself (``vpo serve``) recognises them and uses them as given. The served
model's name carries the model's content hash by default, so the call store never gives a
newly trained model an older one's answers; before sampling, the server's ``/v1/models``
must list that name and, where it reports the folder it loaded, the trained model's.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vpo_core.config import LLMConfig, PolicyServerConfig, SampleConfig
from vpo_core.errors import ConfigError, TransientError
from vpo_core.llm.client import LLMClient, LLMRequest, LLMResult, raise_if_outage
from vpo_core.optimizer import Generation, stable_seed
from vpo_core.prompts.templates import optimizer_messages
from vpo_core.tables import dir_sha256
from vpo_core.workdir import active_root


def served_model_name(model: str) -> str:
    """The default name a policy is served under: its folder's content hash (a hub id is
    its own name)."""
    if Path(model).is_dir():
        return f"vpo-policy-{dir_sha256(model)[:16]}"
    return model


def server_api_key(cfg: PolicyServerConfig) -> str | None:
    """The key from the environment variable ``cfg.api_key_env`` names, if any."""
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ConfigError(f"sample.server.api_key_env: the environment variable "
                          f"{cfg.api_key_env} is not set")
    return key


def check_served_model(api_base: str, served_model: str, model: str,
                       api_key: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
    """The server's ``/v1/models`` entry for ``served_model``; a ConfigError when the
    server does not serve that name, or reports (``root``, as vLLM and ``vpo serve`` do)
    a folder other than ``model``."""
    request = urllib.request.Request(api_base.rstrip("/") + "/models", headers={
        "Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            listed = json.loads(answer.read()).get("data") or []
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"sample.server: {api_base}/models answered HTTP {exc.code} "
                          "(check sample.server.api_key_env)") from exc
    except (OSError, ValueError) as exc:
        raise TransientError(f"sample.server: cannot list the models of {api_base}: "
                             f"{exc}") from exc
    entry = next((e for e in listed if e.get("id") == served_model), None)
    if entry is None:
        ids = ", ".join(repr(e.get("id")) for e in listed) or "nothing"
        raise ConfigError(f"sample.server: {api_base} serves {ids}, not {served_model!r} "
                          f"(start it with --served-model-name {served_model}, or set "
                          "sample.server.served_model)")
    root = entry.get("root")
    if root and Path(model).is_dir() and Path(root).resolve() != Path(model).resolve():
        raise ConfigError(f"sample.server: {api_base} serves {served_model!r} from {root}, "
                          f"not from the trained model {model}")
    return entry


def llm_config(cfg: SampleConfig, served_model: str, api_base: str) -> LLMConfig:
    """The LLM engine's settings for the served policy (the direct HTTP transport: every
    sampling parameter goes out as it is)."""
    s = cfg.server
    return LLMConfig(model=f"openai/{served_model}", api_base=api_base, transport="http",
                     temperature=cfg.temperature, max_tokens=cfg.max_new_tokens,
                     prompt_max_tokens=None, seed=None, concurrency=s.concurrency,
                     timeout_s=s.timeout_s, max_retries=s.max_retries,
                     call_store=s.call_store, api_key_env=s.api_key_env)


def sample_params(cfg: SampleConfig, seed: int) -> dict[str, Any]:
    """A sample's request fields beyond temperature and max_tokens: top-p, its seed, and
    the loop controls when they are on (vLLM reads repetition_penalty, not
    no_repeat_ngram_size; the paper preset has both off)."""
    extra: dict[str, Any] = {}
    if cfg.repetition_penalty != 1.0:
        extra["repetition_penalty"] = cfg.repetition_penalty
    if cfg.no_repeat_ngram_size:
        extra["no_repeat_ngram_size"] = cfg.no_repeat_ngram_size
    return {"top_p": cfg.top_p, "seed": seed, "extra": extra}


def _generation(result: LLMResult, max_tokens: int) -> Generation | str:
    """A sample, or its error status. A sample that used the whole budget counts as cut
    off (the engine does not pass on the server's finish_reason)."""
    if not result.ok:
        return result.status
    return Generation((result.text or "").strip(), result.completion_tokens >= max_tokens,
                      result.completion_tokens, result.prompt_tokens)


def served_generator(model: str, cfg: SampleConfig, work_root: str | Path | None = None,
                     api_base: str | None = None):
    """K samples per query from the server at ``api_base`` (default
    ``cfg.server.api_base``: a server the pipeline starts is passed here, so that its
    address stays out of the shard's cache key); answers are kept in the call store of
    ``work_root`` (default: the active work directory)."""
    s = cfg.server
    api_base = api_base or s.api_base
    if not api_base:
        raise ConfigError("sample.server.api_base is not set: start the policy server (its "
                          "command is sample.server.command) and set its URL, e.g. "
                          "http://host:8000/v1")
    name = s.served_model or served_model_name(model)
    key = server_api_key(s)
    if s.check_model:
        check_served_model(api_base, name, model, key)
    client = LLMClient(llm_config(cfg, name, api_base), key,
                       work_root=work_root or active_root())

    def generate(queries: Sequence[str], seeds: Sequence[int]) -> list[list[Generation | str]]:
        requests = [LLMRequest(f"{i}:{j}", optimizer_messages(query),
                               **sample_params(cfg, stable_seed(seed, j)))
                    for i, (query, seed) in enumerate(zip(queries, seeds, strict=True))
                    for j in range(cfg.k)]
        results = client.run(requests)
        raise_if_outage(results, f"sample: the policy server {api_base}")
        k = cfg.k
        return [[_generation(r, cfg.max_new_tokens) for r in results[i * k:(i + 1) * k]]
                for i in range(len(queries))]
    return generate
