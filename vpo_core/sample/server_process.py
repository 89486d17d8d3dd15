"""A model server run for a stage's duration: started from a configured command (any
program, any Python environment: ``vllm serve``, SGLang, ``vpo serve``), waited for until
its health route answers, and stopped at the end (SIGTERM to its process group, SIGKILL
after a grace period), so a heavy model is loaded once per stage instead of once per
shard, in the environment it needs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from vpo_core.config import PolicyServerConfig
from vpo_core.errors import ConfigError, StageFailed, TransientError

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
LOG_TAIL = 2000


def fill_command(template: Sequence[str], **values: str) -> list[str]:
    """Each argument with its ``{name}`` placeholders filled in one pass (a value is never
    read as a placeholder); an unknown name is a configuration error."""
    def fill(match: re.Match) -> str:
        if match.group(1) not in values:
            raise ConfigError(f"server command {list(template)}: unknown placeholder "
                              f"{{{match.group(1)}}} (known: {', '.join(sorted(values))})")
        return values[match.group(1)]

    return [_PLACEHOLDER.sub(fill, arg) for arg in template]


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (another process may take it before the server
    binds it; the start then fails with the server's own message)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """One server process: ``start`` returns once ``url + health_path`` answers 200."""

    command: list[str]
    url: str
    env: Mapping[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    start_timeout_s: float = 900.0
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    _log: IO[bytes] | None = None

    def start(self) -> ServerProcess:
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            # its own session: stop() signals the server and the workers it spawns
            self.proc = subprocess.Popen(self.command, env={**os.environ, **self.env},
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self._close_log()
            raise ConfigError(f"cannot start the server {self.command[0]!r}: {exc} (check "
                              "the command and its Python environment)") from exc
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            code = self.proc.poll()  # type: ignore[union-attr]
            if code is not None:
                raise StageFailed(f"the server {self.command[0]!r} exited with code {code} "
                                  f"before it was ready{self._tail()}")
            try:
                with urllib.request.urlopen(self.url + self.health_path, timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            if time.monotonic() > deadline:
                raise TransientError(f"the server {self.command[0]!r} was not ready at "
                                     f"{self.url}{self.health_path} within "
                                     f"{self.start_timeout_s:g} s{self._tail()}")
            time.sleep(0.5)

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM to the server's process group, SIGKILL if it is still there after
        ``grace_s``; returns its exit code (None if it never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        self._close_log()
        return proc.returncode

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # type: ignore[union-attr]

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _tail(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        text = self.log_path.read_bytes()[-LOG_TAIL:].decode(errors="replace")
        return f"; the end of its log ({self.log_path}):\n{text}"

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_policy_server(cfg: PolicyServerConfig, model: str, served_model: str,
                        host: str = "127.0.0.1", port: int | None = None,
                        log_path: Path | None = None) -> ServerProcess:
    """Start ``cfg.command`` for ``model`` on ``host:port`` (a free port by default) and
    wait until it is ready; its OpenAI base URL is ``server.url + "/v1"``."""
    if not cfg.command:
        raise ConfigError("sample.server.command is empty: name the command that serves the "
                          "policy (e.g. [vllm, serve, '{model}', --served-model-name, "
                          "'{served_model}', --port, '{port}'])")
    port = port or free_port(host)
    command = fill_command(cfg.command, model=model, served_model=served_model, host=host,
                           port=str(port))
    return ServerProcess(command, f"http://{host}:{port}", cfg.env, cfg.health_path,
                         cfg.start_timeout_s, log_path).start()
