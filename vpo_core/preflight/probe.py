"""Is the work directory the workers' too? The parent writes a probe file into it, a run on
a worker of the pool reads it in *its* work directory and writes an answer beside it, and
the parent reads the answer: both directions of the shared storage are then proven. The
Prefect run is made by ``tasks/preflight.py``; this is the file protocol."""

from __future__ import annotations

import json
import secrets
import socket
from pathlib import Path

from vpo_core.preflight.findings import PreflightFailed

PROBE_DIR = "preflight"


def _probe(work: Path, token: str) -> Path:
    return work / PROBE_DIR / f"probe-{token}.json"


def _answer(work: Path, token: str) -> Path:
    return work / PROBE_DIR / f"probe-{token}.answer.json"


def write_probe(work: Path) -> str:
    """Write a probe file into ``work``; its token names it."""
    token = secrets.token_hex(8)
    path = _probe(work, token)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token": token, "host": socket.gethostname()}))
    return token


def answer_probe(work: Path, token: str) -> dict[str, str]:
    """On the worker: read the parent's probe in this worker's work directory and answer
    it; PreflightFailed when it is not there (the directory is not the parent's)."""
    path = _probe(work, token)
    try:
        sent = json.loads(path.read_text())
    except (OSError, ValueError):
        sent = {}
    if sent.get("token") != token:
        raise PreflightFailed(f"the probe file {path.relative_to(work)} written by the parent "
                              f"is not in this worker's work directory {work} (host "
                              f"{socket.gethostname()}): the work directory is not shared")
    answer = {"host": socket.gethostname(), "work_dir": str(work), "parent": sent["host"]}
    _answer(work, token).write_text(json.dumps(answer))
    return answer


def read_answer(work: Path, token: str) -> dict[str, str] | None:
    """The worker's answer as this process sees it; None when it is not here."""
    try:
        return json.loads(_answer(work, token).read_text())
    except (OSError, ValueError):
        return None


def clear_probe(work: Path, token: str) -> None:
    for path in (_probe(work, token), _answer(work, token)):
        path.unlink(missing_ok=True)
