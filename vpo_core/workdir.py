"""The project work directory: Prefect's home, its result store, and every stage's data.

Nothing is written to the user's home: :func:`prefect_env` points PREFECT_HOME (and the
Hugging Face caches) inside the work directory before Prefect is imported.

The work directory is portable: references to files inside it are stored relative to it
(:class:`vpo_core.tables.DataRef`) and resolved against the *active* work directory of
the process (:func:`activate`), so a moved directory, or one a GPU worker mounts at
another path, keeps every cache hit.
"""

from __future__ import annotations

import hashlib
import json
import os
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
        return self.root / "hf"

    def stage_dir(self, stage: str, step: str, key: Any) -> Path:
        """Folder of one step's outputs, ``data/<stage>/<step>-<digest>``, the digest of
        what determines them (parameters and input content hashes): runs with other
        inputs never clobber it, and a resumed run writes to the same place."""
        blob = json.dumps(key, sort_keys=True, default=str).encode()
        return self.root / "data" / stage / f"{step}-{hashlib.sha256(blob).hexdigest()[:12]}"


def prefect_env(work: WorkDir, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Prefect and Hugging Face rooted in the work directory.

    Values the user already exported win, so PREFECT_API_URL pointing at a real server
    and an existing HF_HOME with downloaded models keep working.
    """
    environ = os.environ if environ is None else environ
    wanted = {
        "PREFECT_HOME": str(work.prefect_home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(work.results),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "HF_HOME": str(work.hf_home),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # progress lines of vpo_core (vpo_core.progress) in the terminal and the run log
        "PREFECT_LOGGING_EXTRA_LOGGERS": "vpo_core",
    }
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
