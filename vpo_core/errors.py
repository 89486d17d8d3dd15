"""Errors that decide what a stage does next: fail fast, retry, or record a row.

Prefect retries only what :func:`is_transient` accepts, so a bad input file fails
at once with its message instead of being retried three times.
"""

from __future__ import annotations

import socket


class VPOError(Exception):
    """Base class of the project's errors."""


class InputError(VPOError):
    """Bad input that no retry can fix: names the file, the row and the field."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 field: str | None = None) -> None:
        parts = [f"file {path}" if path else "", f"row {row}" if row is not None else "",
                 f"field {field!r}" if field else ""]
        where = ", ".join(p for p in parts if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.row, self.field = path, row, field


class ConfigError(VPOError):
    """A configuration file or value that does not validate."""


class StageFailed(VPOError):
    """A stage that cannot produce its output (e.g. every LLM call failed); not retried."""


class TransientError(VPOError):
    """A failure worth retrying: rate limit, timeout, dropped connection, 5xx."""


_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError, TimeoutError, ConnectionError, socket.timeout,
)
_TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# Client libraries' names for the same (litellm, openai, httpx), matched without imports.
_TRANSIENT_NAMES = {"RateLimitError", "InternalServerError", "ServiceUnavailableError",
                    "Timeout", "APIConnectionError", "APITimeoutError", "ReadTimeout",
                    "ConnectTimeout", "RemoteProtocolError"}


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry with backoff can fix; False for everything else."""
    if isinstance(exc, (InputError, ConfigError, StageFailed)):
        return False
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    status = getattr(exc, "status_code", None) or getattr(
        getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status in _TRANSIENT_STATUS
    return type(exc).__name__ in _TRANSIENT_NAMES
