"""The project work directory: Prefect's home, its result store, and every stage's data.

Nothing of the pipeline's own is written to the user's home: :func:`prefect_env` points
PREFECT_HOME inside the work directory before Prefect is imported. Hugging Face files go
where the user's Hugging Face setup says when there is one (:func:`hf_setup`), so models
downloaded with ``huggingface-cli`` and a saved login are found; only without one do they
stay in the work directory too.

The work directory is portable: references to files inside it are stored relative to it
(:class:`vpo_core.tables.DataRef`) and resolved against the *active* work directory of
the process (:func:`activate`), so a moved directory, or one a GPU worker mounts at
another path, keeps every cache hit.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACTIVE_ENV = "VPO_WORK_DIR"
# A worker that mounts the shared work directory at another path than the parent flow
# sees it sets this; runs sent to that worker use it instead of the parent's path.
WORKER_ENV = "VPO_WORKER_WORK_DIR"


@dataclass(frozen=True)
class WorkDir:
    """Paths inside one work directory."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> WorkDir:
        return cls(Path(root).expanduser().resolve())

    def create(self) -> WorkDir:
        """Make the folders Prefect expects to exist."""
        for path in (self.prefect_home, self.results):
            path.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def results(self) -> Path:
        """Prefect's result store: cached task results, JSON-serialised."""
        return self.root / "results"

    @property
    def models(self) -> Path:
        """Converted and trained models (the bundled SmolLM2 as a Hugging Face folder)."""
        return self.root / "models"

    @property
    def hf_home(self) -> Path:
        """Hugging Face's home when the user has no Hugging Face setup of their own."""
        return self.root / "hf"

    def stage_dir(self, stage: str, step: str, key: Any) -> Path:
        """Folder of one step's outputs, ``data/<stage>/<step>-<digest>``, the digest of
        what determines them (parameters and input content hashes): runs with other
        inputs never clobber it, and a resumed run writes to the same place."""
        blob = json.dumps(key, sort_keys=True, default=str).encode()
        return self.root / "data" / stage / f"{step}-{hashlib.sha256(blob).hexdigest()[:12]}"


# Environment variables that make a Hugging Face setup (the hub's cache and login).
HF_SETTINGS = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN",
               "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")


def default_hf_home(environ: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps its files when HF_HOME is unset (its own rule)."""
    cache = environ.get("XDG_CACHE_HOME") or str(
        Path(environ.get("HOME") or Path.home()) / ".cache")
    return Path(cache).expanduser() / "huggingface"


def hf_setup(environ: Mapping[str, str]) -> str | None:
    """What makes the user's Hugging Face setup, or None when there is none: one of
    :data:`HF_SETTINGS` set, or the default Hugging Face home holding a hub cache
    (``hub/``, where ``huggingface-cli download`` puts models) or a saved login
    (``token``, written by ``huggingface-cli login``)."""
    for name in HF_SETTINGS:
        if environ.get(name):
            return f"${name}"
    home = default_hf_home(environ)
    return next((str(home / p) for p in ("hub", "token") if (home / p).exists()), None)


def prefect_env(work: WorkDir, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Prefect rooted in the work directory, and for Hugging Face there
    too unless the user has a Hugging Face setup (:func:`hf_setup`).

    Values the user already exported win, so PREFECT_API_URL pointing at a real server
    keeps working.
    """
    environ = os.environ if environ is None else environ
    wanted = {
        "PREFECT_HOME": str(work.prefect_home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(work.results),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # progress lines of vpo_core (vpo_core.progress) in the terminal and the run log
        "PREFECT_LOGGING_EXTRA_LOGGERS": "vpo_core",
    }
    if hf_setup(environ) is None:
        wanted["HF_HOME"] = str(work.hf_home)
    return {k: v for k, v in wanted.items() if k not in environ}


def activate(root: str | Path) -> WorkDir:
    """Make ``root`` the work directory this process (and the processes it starts)
    resolves relative references against; return it, created."""
    work = WorkDir.at(root).create()
    os.environ[ACTIVE_ENV] = str(work.root)
    return work


def active_root() -> Path | None:
    """The active work directory, or None when no flow has activated one."""
    root = os.environ.get(ACTIVE_ENV)
    return Path(root) if root else None


def current() -> WorkDir:
    """The active work directory (tasks find the model cache and the call store here, so
    no absolute path is ever a task parameter or part of a cache key)."""
    root = active_root()
    if root is None:
        raise RuntimeError(f"no active work directory: call vpo_core.workdir.activate() "
                           f"first (or set {ACTIVE_ENV})")
    return WorkDir(root)
