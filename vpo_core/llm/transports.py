"""How a chat completion travels: through litellm (any provider) or straight to an
OpenAI-compatible HTTP server. Both raise :class:`CallError` with a kind that says
whether a retry can help."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from vpo_core.config import LLMConfig

if TYPE_CHECKING:
    from vpo_core.llm.client import LLMRequest

PRICE_FILE = "model_prices_and_context_window_backup.json"
TRANSIENT_KINDS = {"rate_limit", "timeout", "server", "connection", "malformed", "empty"}
_HINTS = {
    "auth": "check the API key: set the environment variable named by judge.api_key_env "
            "or the Prefect Secret block named by judge.api_key_secret",
    "not_found": "check judge.model and judge.api_base",
    "bad_request": "check judge.model, judge.max_tokens and the provider's parameters",
    "context_window": "the prompt is longer than the model's context window",
}


class CallError(Exception):
    """A failed attempt: ``kind`` (rate_limit, timeout, server, connection, malformed,
    empty, auth, not_found, bad_request, context_window, content_policy, unknown)."""

    def __init__(self, kind: str, message: str, transient: bool | None = None,
                 retry_after: float | None = None) -> None:
        hint = _HINTS.get(kind)
        super().__init__(f"{message} ({hint})" if hint else message)
        self.kind = kind
        self.transient = kind in TRANSIENT_KINDS if transient is None else transient
        self.retry_after = retry_after


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost: float


def kind_of_status(status: int, body: str = "") -> str:
    """The error kind of an HTTP status."""
    if status == 429:
        return "rate_limit"
    if status in (408, 409, 425):
        return "timeout"
    if status >= 500:
        return "server"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if "content_filter" in body or "content_policy" in body:
        return "content_policy"
    if "context_length" in body or "maximum context" in body:
        return "context_window"
    return "bad_request"


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_LITELLM_KINDS = {
    "RateLimitError": "rate_limit", "Timeout": "timeout", "APITimeoutError": "timeout",
    "InternalServerError": "server", "ServiceUnavailableError": "server",
    "BadGatewayError": "server", "APIConnectionError": "connection",
    "AuthenticationError": "auth", "PermissionDeniedError": "auth",
    "NotFoundError": "not_found", "ContentPolicyViolationError": "content_policy",
    "ContextWindowExceededError": "context_window", "BadRequestError": "bad_request",
    "UnprocessableEntityError": "bad_request",
}


def _from_litellm(exc: Exception) -> CallError:
    kind = _LITELLM_KINDS.get(type(exc).__name__)
    if kind is None:
        status = getattr(exc, "status_code", None)
        kind = kind_of_status(status, str(exc)) if isinstance(status, int) else "unknown"
    headers = getattr(exc, "litellm_response_headers", None) or {}
    return CallError(kind, f"{type(exc).__name__}: {exc}",
                     retry_after=_retry_after(headers.get("retry-after")))


class LiteLLMTransport:
    """Any litellm model: ``gpt-4o``, ``anthropic/...``, ``openai/<name>`` + api_base,
    ``local/smollm2-135m-instruct`` (the embedded default)."""

    def __init__(self, cfg: LLMConfig, api_key: str | None) -> None:
        import litellm

        litellm.suppress_debug_info = True
        self.cfg = cfg
        # OpenAI-compatible servers often need no key, but the OpenAI SDK insists on one
        self.api_key = api_key or ("no-key" if cfg.api_base else None)

    async def complete(self, request: LLMRequest, params: dict[str, Any]) -> Completion:
        import litellm

        cfg = self.cfg
        try:
            response = await litellm.acompletion(
                model=cfg.model, messages=request.messages, api_base=cfg.api_base,
                api_key=self.api_key, timeout=cfg.timeout_s, max_retries=0, **params)
        except Exception as exc:
            raise _from_litellm(exc) from exc
        if not response.choices or response.choices[0].message.content is None:
            raise CallError("empty", "the answer had no choices or no content")
        usage = getattr(response, "usage", None)
        cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost") or 0.0
        return Completion(response.choices[0].message.content,
                          getattr(usage, "prompt_tokens", 0) or 0,
                          getattr(usage, "completion_tokens", 0) or 0, float(cost))


@cache
def _price_map() -> dict[str, Any]:
    """litellm's bundled price map, read without importing litellm (~3 s of CPU that
    would stall every call of the engine's loop on the first answer)."""
    if "litellm" in sys.modules:
        return sys.modules["litellm"].model_cost
    spec = importlib.util.find_spec("litellm")  # finds the package without importing it
    folder = Path(next(iter(spec.submodule_search_locations)))
    return orjson.loads((folder / PRICE_FILE).read_bytes())


@cache
def _token_prices(model: str) -> tuple[float, float]:
    """(input, output) USD per token from litellm's local cost map; 0 when unknown."""
    prices = _price_map()
    info = prices.get(model) or prices.get(model.split("/", 1)[-1], {})
    return (float(info.get("input_cost_per_token") or 0.0),
            float(info.get("output_cost_per_token") or 0.0))


class HTTPTransport:
    """A direct POST to ``{api_base}/chat/completions`` of an OpenAI-compatible server."""

    def __init__(self, cfg: LLMConfig, api_key: str | None,
                 session: aiohttp.ClientSession) -> None:
        self.cfg, self.session = cfg, session
        self.url = cfg.api_base.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.model = cfg.model.split("/", 1)[1]
        self.timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)

    async def complete(self, request: LLMRequest, params: dict[str, Any]) -> Completion:
        cfg = self.cfg
        payload = {"model": self.model, "messages": request.messages, **params}
        try:
            async with self.session.post(self.url, data=orjson.dumps(payload),
                                         headers=self.headers, timeout=self.timeout) as resp:
                body = await resp.read()
                if resp.status != 200:
                    text = body.decode(errors="replace")
                    raise CallError(kind_of_status(resp.status, text),
                                    f"HTTP {resp.status}: {text[:300]}",
                                    retry_after=_retry_after(resp.headers.get("retry-after")))
        except TimeoutError as exc:
            raise CallError("timeout", f"no answer within {cfg.timeout_s} s") from exc
        except aiohttp.ClientError as exc:
            raise CallError("connection", f"{type(exc).__name__}: {exc}") from exc
        return completion_from(body, cfg.model)


def completion_from(body: bytes | dict[str, Any], model: str, price_factor: float = 1.0
                    ) -> Completion:
    """A chat completion's text, usage and cost (``price_factor`` 0.5 for batch answers)."""
    try:
        data = orjson.loads(body) if isinstance(body, bytes) else body
        choices = data.get("choices") or []
        text = choices[0]["message"]["content"] if choices else None
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CallError("malformed", f"not a chat completion: {str(body)[:200]}") from exc
    if text is None:
        raise CallError("empty", "the answer had no choices or no content")
    usage = data.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), \
        int(usage.get("completion_tokens") or 0)
    price_in, price_out = _token_prices(model)
    return Completion(text, prompt, completion,
                      (prompt * price_in + completion * price_out) * price_factor)


def uses_http(cfg: LLMConfig) -> bool:
    """The direct path: asked for, or ``auto`` with an OpenAI-compatible server."""
    if cfg.transport == "http":
        return True
    return cfg.transport == "auto" and cfg.model.startswith("openai/") and bool(cfg.api_base)


def make_transport(cfg: LLMConfig, api_key: str | None, model_cache: str | None,
                   session: aiohttp.ClientSession) -> Any:
    """The transport for a configuration (made on the engine's loop, which owns
    ``session``)."""
    if cfg.model.startswith("local/"):
        from vpo_core.llm.local import register_local_provider

        register_local_provider(model_cache, batch_size=cfg.concurrency,
                                repetition_penalty=cfg.repetition_penalty,
                                no_repeat_ngram_size=cfg.no_repeat_ngram_size)
    if uses_http(cfg):
        if not cfg.api_base or "/" not in cfg.model:
            raise ValueError("the http transport needs judge.api_base and an 'openai/<name>' "
                             "model")
        return HTTPTransport(cfg, api_key, session)
    return LiteLLMTransport(cfg, api_key)
