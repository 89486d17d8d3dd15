"""The whole pipeline on tiny sizes, as a user runs it (bundled queries and model, tiny
CogVideoX, frame metrics; the judge on the real local OpenAI server):

- `vpo ui up` starts a real Prefect server, the cpu/gpu process pools, every deployment of
  prefect.yaml and the workers; the `vpo-pipeline/cpu-tiny` deployment runs through the
  cpu worker with the GPU stages placed on the gpu pool (as the paper preset places them),
  and its artifacts are read back through the Prefect client; every stage's output has its
  schema, DPO changes the weights, the evaluation has every method;
- every placed stage's steps ran as `vpo-step/gpu` runs on the gpu worker; a stage run
  again makes no new run; a step that fails on the worker fails its stage with its name;
- `vpo run` (inline, no placement) killed (SIGKILL) in the middle of the sample stage and
  run again completes without redoing finished shards and ends with the same data as the
  placed deployment run;
- `vpo ui down` stops exactly what `up` started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from safetensors.numpy import load_file

from flows.ui import POOLS, WORKER_MALLOC_ENV, down, status, up
from tasks.preflight import inspect_pool
from vpo_core.config import LLMConfig, load_config
from vpo_core.curate.sources import bundled_queries
from vpo_core.tables import read_table
from vpo_core.workdir import WorkDir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TABLES = {"samples", "critiques", "text_pairs", "videos", "rewards", "dpo_pairs",
          "eval_judgements", "queries", "sft_examples"}
TIMEOUT_S = 900


PLACED = ("train_sft", "sample", "render", "score", "train_dpo")


def tiny_pipeline(tmp: Path, judge: LLMConfig, name: str, placed: bool = False) -> Path:
    """A YAML config of the embedded default cut down to seconds per stage; ``placed``
    puts the GPU stages on the gpu pool."""
    src = tmp / "queries.json"
    src.write_text(json.dumps(bundled_queries()[:300]))
    train = {"global_batch_size": 2, "trl": {"max_steps": 2, "per_device_train_batch_size": 2,
                                             "learning_rate": 1e-4, "warmup_steps": 0.0}}
    data = {"extends": "cpu-tiny", "work_dir": str(tmp / name),
            "judge": judge.model_dump(mode="json"),
            "policy": {"max_length": 384},
            "curate": {"input": str(src), "split": {"sft": 4, "dpo": 3, "eval": 2},
                       "safety": {"llm_recheck": False}},
            "sft_data": {"shard_size": 2}, "train_sft": train, "train_dpo": train,
            "sample": {"k": 2, "max_new_tokens": 160, "shard_size": 2},  # shorter: cut off
            "text_feedback": {"shard_size": 2}, "render": {"shard_size": 2},
            "pairs": {"margin": 0.0}, "evaluate": {"reoptimize_rounds": 2},
            "placement": {stage: "gpu" for stage in PLACED} if placed else {}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _vpo(*args: str) -> list[str]:
    """The ``vpo`` command of this environment, as a user runs it."""
    return [str(Path(sys.executable).parent / "vpo"), *args]


def _outputs(work: Path) -> dict[str, Path]:
    """The final table of each stage (merge/build outputs), by table name."""
    found = {}
    for path in sorted((work / "data").rglob("*.parquet"), key=lambda p: p.stat().st_mtime):
        if path.stem in TABLES:
            found[path.stem] = path
    return found


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(state: dict):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: state["api"]})


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    work = WorkDir.at(tmp_path_factory.mktemp("ui") / "work")
    state = up(work, port=_port())
    with _api(state):   # up() returns once every pool has a worker online
        assert all(inspect_pool(pool).online_workers for pool in POOLS)
    yield work, state
    down(work)


@pytest.fixture(scope="module")
def deployed(ui, tmp_path_factory, module_judge: LLMConfig) -> tuple[Path, object]:
    """The pipeline deployment run through the cpu worker, as from the UI's Run button."""
    from prefect.deployments import run_deployment

    _, state = ui
    tmp = tmp_path_factory.mktemp("pipe")
    config = load_config(tiny_pipeline(tmp, module_judge, "straight", placed=True))
    with _api(state):
        run = run_deployment("vpo-pipeline/cpu-tiny", timeout=TIMEOUT_S,
                             parameters={"config": config.model_dump(mode="json")})
    assert run.state.is_completed(), run.state
    return tmp / "straight", run


def test_pipeline_deployment_publishes_its_artifacts(ui, deployed) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _, state = ui
    _, run = deployed
    with _api(state), get_client(sync_client=True) as client:
        subflows = client.read_flow_runs()
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["evaluate-report", "pairs-summary", "train-dpo-progress"])))
    ours = {f.id for f in subflows if f.id == run.id or f.parent_task_run_id}
    by_key = {a.key: a for a in arts if a.flow_run_id in ours}
    assert set(by_key) == {"evaluate-report", "pairs-summary", "train-dpo-progress"}
    report = by_key["evaluate-report"].data
    for method in ("| original |", "| few-shot |", "| sft |", "| dpo |"):
        assert method in report
    assert re.search(r"^\| pairs \| [1-9]", by_key["pairs-summary"].data, re.M)
    assert by_key["train-dpo-progress"].data == 100.0


def test_every_stage_output_exists_with_its_schema(deployed) -> None:
    work, _ = deployed
    outputs = _outputs(work)
    assert set(outputs) == TABLES
    for table, path in outputs.items():
        assert read_table(path, table).height > 0, table
    pairs = read_table(outputs["dpo_pairs"], "dpo_pairs")
    assert set(pairs["source"]) <= {"text", "video"}


def test_dpo_changes_the_sft_weights(deployed) -> None:
    work, _ = deployed
    sft = load_file(next((work / "data" / "train-sft").rglob("model.safetensors")))
    dpo = load_file(next((work / "data" / "train-dpo").rglob("model.safetensors")))
    assert sft.keys() == dpo.keys()
    assert any(not (sft[k] == dpo[k]).all() for k in sft)


def test_evaluation_has_every_method_and_round(deployed) -> None:
    work, _ = deployed
    judged = read_table(_outputs(work)["eval_judgements"], "eval_judgements")
    rounds = judged.group_by("method").agg(pl.col("round").unique().sort())
    assert {m: r for m, r in rounds.iter_rows()} == {
        "original": [0], "few-shot": [0], "base": [1, 2], "sft": [1, 2], "dpo": [1, 2]}
    evaluate = work / "data" / "evaluate"
    report = next(evaluate.rglob("eval_report.md")).read_text()
    for method in ("original", "few-shot", "base", "sft", "dpo"):
        assert f"| {method} |" in report
    assert next(evaluate.rglob("eval_chart.png")).stat().st_size > 1000


def test_killed_pipeline_resumes_and_matches(deployed, tmp_path: Path,
                                             module_judge: LLMConfig) -> None:
    config = tiny_pipeline(tmp_path, module_judge, "killed")
    work = tmp_path / "killed"
    proc = subprocess.Popen(_vpo("run", "--config", str(config)), cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, first = time.monotonic() + TIMEOUT_S, None
    while time.monotonic() < deadline and proc.poll() is None:
        done = list((work / "data" / "sample").rglob("samples-00000.parquet"))
        if done:                       # sample shard 0 finished, shard 1 to come
            first = done[0]
            time.sleep(1.0)            # its result is stored just after its Parquet
            break
        time.sleep(0.1)
    assert first is not None, "the pipeline never reached the sample stage"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((work / "data").rglob("dpo_pairs.parquet"))    # it died mid-pipeline
    mtime = first.stat().st_mtime_ns

    again = subprocess.run(_vpo("run", "--config", str(config)), cwd=ROOT,
                           capture_output=True, text=True, timeout=TIMEOUT_S)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "Table 2" in again.stdout and "vpo ui up" in again.stdout
    assert first.stat().st_mtime_ns == mtime                    # finished shard not redone
    resumed, straight = _outputs(work), _outputs(deployed[0])
    bookkeeping = ("cost", "model", "cached_calls", "cost_saved")  # how, not what
    for table in ("samples", "critiques", "dpo_pairs", "eval_judgements"):
        a = read_table(resumed[table], table).drop(bookkeeping, strict=False)
        b = read_table(straight[table], table).drop(bookkeeping, strict=False)
        assert a.equals(b), table


def _step_runs(state: dict) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with _api(state), get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=["gpu"])))


def test_placed_stages_ran_on_the_gpu_pool(ui, deployed) -> None:
    _, state = ui
    pipeline = deployed[1]
    # the pipeline's own step runs (other tests of this module start step runs too)
    runs = [r for r in _step_runs(state) if r.created <= pipeline.end_time]
    seen = [(r.name, r.work_pool_name, r.state.name if r.state else None) for r in runs]
    done = {r.parameters["stage"] for r in runs
            if r.work_pool_name == "gpu" and r.state and r.state.is_completed()}
    assert done == {"train-sft", "sample", "render", "score", "train-dpo",
                    "preflight"}, seen                                 # + the storage probe
    assert all(r.parent_task_run_id for r in runs)           # linked to the parent flow


def test_workers_keep_the_memory_their_steps_free(ui) -> None:
    """The workers (and so their flow runs) run with glibc's allocator settings."""
    _, state = ui
    for pool in POOLS:
        raw = Path(f"/proc/{state['pids'][f'worker-{pool}']}/environ").read_bytes()
        env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
        assert {k: env.get(k) for k in WORKER_MALLOC_ENV} == WORKER_MALLOC_ENV, pool


def _stage(state: dict, config: Path, stage: str, *sets: str) -> subprocess.CompletedProcess:
    """``vpo <stage>`` against the ui's server, as a user runs it with PREFECT_API_URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_API_URL"] = state["api"]
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.run(_vpo(stage, "--config", str(config), *args), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def test_a_placed_stage_run_again_makes_no_new_run(ui, deployed) -> None:
    _, state = ui
    before = len(_step_runs(state))
    done = _stage(state, deployed[0].parent / "straight.yaml", "score")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(_step_runs(state)) == before


def test_a_step_failing_on_the_worker_fails_its_stage_with_its_name(ui, deployed) -> None:
    _, state = ui
    failed = _stage(state, deployed[0].parent / "straight.yaml", "render",
                    "render.num_frames=10")                   # CogVideoX needs 8k + 1
    assert failed.returncode == 1
    assert re.search(r"render: run render-shard-\w+ of vpo-step/gpu on pool 'gpu' ended "
                     r"Failed", failed.stderr), failed.stderr[-3000:]
    assert "num_frames" in failed.stderr


def test_ui_down_stops_what_it_started(ui) -> None:
    work, _ = ui
    assert sorted(down(work)) == ["server", "worker-cpu", "worker-gpu"]
    assert not status(work)["server"] and down(work) == []
