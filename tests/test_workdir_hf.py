"""The user's Hugging Face setup is respected: with a hub cache or a saved login (or any
HF_* setting), ``vpo`` finds the models and the token there; without one, Hugging Face's
files stay in the work directory and nothing is written to the home folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpo_core.models.bundled import bundled_model_dir
from vpo_core.workdir import HF_SETTINGS, WorkDir, hf_setup, prefect_env

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "vpo-test/tiny-optimizer"
TOKEN = "hf_fake_token_for_tests_0123456789"
PROBE = """
import json, os, sys
from vpo_core.workdir import WorkDir, prefect_env
os.environ.update(prefect_env(WorkDir.at(sys.argv[1])))   # what every vpo command does
import huggingface_hub
from huggingface_hub import constants
print(json.dumps({"hub_cache": constants.HF_HUB_CACHE, "has_token":
                  huggingface_hub.get_token() == sys.argv[2]}))
"""


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The test process's environment with a chosen HOME and no Hugging Face settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in HF_SETTINGS and not k.startswith("PREFECT_") and k != "XDG_CACHE_HOME"}
    return env | {"HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


def _probe(home: Path, work: Path, **extra: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(work), TOKEN], cwd=ROOT,
                          env=_env(home, **extra), capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _optimize(home: Path, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "optimize", "a red fox",
                           "--model", REPO_ID, "--max-new-tokens", "4", "--work-dir",
                           str(work)], cwd=ROOT, env=_env(home), capture_output=True,
                          text=True, timeout=300)


def _user_with_hub_cache(home: Path, model: Path) -> Path:
    """A home as ``huggingface-cli download`` and ``login`` leave it: the model in the hub
    cache (refs/main -> snapshots/<commit>/, files linked to the converted model) and the
    saved token."""
    hf = home / ".cache" / "huggingface"
    repo = hf / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in model.iterdir():
        (snapshot / file.name).symlink_to(file)
    (hf / "token").write_text(TOKEN)
    return hf


@pytest.mark.parametrize(("environ", "layout", "configured"), [
    ({}, [], False),
    ({}, [".cache/huggingface/"], False),                  # an empty folder is no setup
    ({}, [".cache/huggingface/hub/"], True),
    ({}, [".cache/huggingface/token"], True),
    ({"XDG_CACHE_HOME": "{home}/xdg"}, ["xdg/huggingface/hub/"], True),
    ({"XDG_CACHE_HOME": "{home}/xdg"}, [".cache/huggingface/hub/"], False),  # not looked at
    ({"HF_HOME": "/data/hf"}, [], True),
    ({"HF_HUB_CACHE": "/data/hub"}, [], True),
    ({"HUGGINGFACE_HUB_CACHE": "/data/hub"}, [], True),
    ({"HF_TOKEN": TOKEN}, [], True),
])
def test_what_counts_as_a_hugging_face_setup(tmp_path: Path, environ: dict, layout: list,
                                             configured: bool) -> None:
    home = tmp_path / "home"
    for item in layout:
        path = home / item
        if item.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True)
            path.write_text(TOKEN)
    environ = {"HOME": str(home)} | {k: v.format(home=home) for k, v in environ.items()}
    work = WorkDir.at(tmp_path / "work")
    env = prefect_env(work, environ)
    assert (hf_setup(environ) is not None) == configured
    assert env.get("HF_HOME") == (None if configured else str(work.hf_home))
    assert env["PREFECT_HOME"] == str(work.prefect_home)   # Prefect stays in the work dir


def test_a_users_hub_cache_and_login_are_used(tmp_path: Path, bundled_models: Path) -> None:
    home = tmp_path / "home"
    hf = _user_with_hub_cache(home, bundled_model_dir(bundled_models))
    work = tmp_path / "work"
    seen = _probe(home, work)
    assert seen == {"hub_cache": str(hf / "hub"), "has_token": True}
    done = _optimize(home, work)                  # a hub id, offline: from the user's cache
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert not (work / "hf").exists()


def test_without_a_setup_hugging_face_stays_in_the_work_dir(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    seen = _probe(home, work)
    assert seen == {"hub_cache": str(WorkDir.at(work).hf_home / "hub"), "has_token": False}
    assert _probe(home, work, HF_TOKEN=TOKEN)["has_token"]   # a token in the environment
    done = _optimize(home, work)                   # the hub id is not in the work dir's cache
    assert done.returncode != 0 and REPO_ID in done.stderr
    assert list(home.iterdir()) == []                        # nothing in the user's home
