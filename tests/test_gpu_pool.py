"""The render stage through a real local Prefect server: `vpo ui up` starts the server,
the cpu and gpu process pools, every deployment of prefect.yaml and the workers; the
render flow sends each shard to the `render-shard/gpu` deployment and collects the
videos; a second run renders nothing new; `vpo ui down` stops everything."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from flows.ui import down, status, ui_env, up
from vpo_core.tables import read_table, write_table
from vpo_core.workdir import WorkDir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from flows.render import render_flow
from vpo_core.config import PipelineConfig, RenderConfig
from vpo_core.tables import ref_for
cfg = PipelineConfig(work_dir=sys.argv[1], render=RenderConfig(work_pool="gpu", shard_size=2))
out = render_flow(cfg, critiques=ref_for(sys.argv[2], "critiques"))
print("RESULT", json.dumps(out["videos"].model_dump()))
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _critiques(path: Path) -> Path:
    rows = [{"query_id": f"q{i}", "query": q, "sample_index": 0, "prompt": f"{q}, cinematic",
             "critique_status": "ok", "judgement": "yes", "refine_status": "skipped",
             "render": True, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0,
             "critique": None, "refinement": None, "refined": None}
            for i, q in enumerate(["a red fox in snow", "waves at dawn", "a busy market"])]
    write_table(pl.DataFrame(rows), path, "critiques")
    return path


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    work = WorkDir.at(tmp_path_factory.mktemp("ui") / "work")
    state = up(work, port=_port())
    yield work, state
    down(work)


def _render(work: WorkDir, critiques: Path, port: int) -> dict:
    env = ui_env(work, port) | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(work.root), str(critiques)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _shard_runs(api: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=["gpu"])))


def test_render_shards_run_on_the_gpu_pool_and_resume(ui, tmp_path: Path) -> None:
    work, state = ui
    port = int(state["api"].rsplit(":", 1)[1].split("/")[0])
    assert status(work)["server"] and all(status(work)["processes"].values())
    critiques = _critiques(tmp_path / "critiques.parquet")

    videos = read_table(_render(work, critiques, port)["path"], "videos")
    assert videos.height == 3 and videos["status"].to_list() == ["ok"] * 3
    assert all(Path(p).stat().st_size > 0 for p in videos["video_path"])
    runs = _shard_runs(state["api"])
    assert len(runs) == 2                                       # 3 prompts, 2 per shard
    assert all(r.state.is_completed() and r.parent_task_run_id for r in runs)
    mtimes = [os.stat(p).st_mtime_ns for p in videos["video_path"]]

    again = read_table(_render(work, critiques, port)["path"], "videos")
    assert again["video_path"].to_list() == videos["video_path"].to_list()
    assert [os.stat(p).st_mtime_ns for p in again["video_path"]] == mtimes   # not re-rendered
    assert len(_shard_runs(state["api"])) == 4


def test_ui_down_stops_what_it_started(ui) -> None:
    work, _ = ui
    assert sorted(down(work)) == ["server", "worker-cpu", "worker-gpu"]
    assert not status(work)["server"] and down(work) == []
