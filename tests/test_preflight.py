"""Preflight: each check fails on its own, naming its field, against the real thing (the
project's OpenAI-compatible server, a closed port, the local hub cache, a real Prefect
server with a pool and no worker, a process worker for the shared-storage probe); the
embedded default passes them all; `vpo run` and the pipeline flow stop before any stage.

Tests run as root in CI, where chmod does not stop a write: the unwritable work directory
is a path under a regular file, which stops everyone."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.preflight import run_preflight
from vpo_core.config import PipelineConfig, ScoreConfig, Stage, load_config
from vpo_core.preflight import Finding, Plan, Reach, errors, run_checks
from vpo_core.preflight.checks import TINY_PIPELINE, cuda_devices, runner_needs

ROOT = Path(__file__).resolve().parents[1]
VPO = [sys.executable, "-c", "from flows.cli import main; main()"]


def _config(tmp_path: Path, **sets: object) -> PipelineConfig:
    """The embedded default in ``tmp_path``, with dotted overrides."""
    return load_config("cpu-tiny", {"work_dir": str(tmp_path / "work"), **sets})


def _only_error(findings: list[Finding]) -> Finding:
    """The one error of a configuration broken in one place (the rest must pass)."""
    bad = errors(findings)
    assert len(bad) == 1, bad
    return bad[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the default
def test_embedded_default_passes_every_check(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    findings = run_preflight(cfg)
    assert errors(findings) == [] and [f for f in findings if f.level == "warning"] == []
    assert sorted(f.field for f in findings) == sorted([
        "work_dir", "work_dir", "curate.input", "judge.model", "judge.call_store", "policy.model",
        "render.pipeline", "score.backend", "placement"])
    space = next(f.found for f in findings if f.found.startswith("needs"))
    assert "32 videos x 9 frames x 64x64" in space and "2 trained models of 135M" in space
    assert not (tmp_path / "work").exists()             # checking creates nothing


def test_plan_counts_only_the_stages_that_run(tmp_path: Path) -> None:
    cfg = _config(tmp_path, **{"curate.safety.llm_recheck": False, "score.backend":
                               "vlm-checklist"})
    assert Plan(cfg).judge_stages == [Stage.sft_data, Stage.text_feedback, Stage.score,
                                      Stage.evaluate]
    assert Plan(cfg).videos == 8 * 4                  # dpo x K, no evaluation videos
    assert Plan(cfg.model_copy(update={"iterations": 2})).videos == 64
    only_curate = run_checks(cfg, stages=frozenset({Stage.curate}))
    assert {f.field for f in only_curate} == {"work_dir", "curate.input", "placement"}


def test_tiny_pipeline_name_matches_the_renderer() -> None:
    from vpo_core.render.pipelines import TINY_COGVIDEOX

    assert TINY_PIPELINE == TINY_COGVIDEOX


# --------------------------------------------------------------------------- the judge
def test_missing_key_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VPO_TEST_JUDGE_KEY", raising=False)
    cfg = _config(tmp_path, **{"judge.model": "gpt-4o",
                               "judge.api_key_env": "VPO_TEST_JUDGE_KEY"})
    bad = _only_error(run_preflight(cfg))
    assert bad.field == "judge.api_key_env" and "VPO_TEST_JUDGE_KEY is not set" in bad.found
    assert "export VPO_TEST_JUDGE_KEY" in bad.fix


def test_provider_key_litellm_looks_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    cfg = _config(tmp_path, **{"judge.model": "anthropic/claude-3-5-sonnet-20240620"})
    bad = _only_error(run_preflight(cfg))
    assert bad.field == "judge.api_key_env" and "ANTHROPIC_API_KEY" in bad.found


def test_unanswering_api_base(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}/v1"
    cfg = _config(tmp_path, **{"judge.model": "openai/fake", "judge.api_base": base})
    bad = _only_error(run_preflight(cfg))
    assert bad.field == "judge.api_base" and base in bad.found and "connection" in bad.found


def test_judge_answers_one_request_with_its_cost(tmp_path: Path, fake_llm,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPO_TEST_JUDGE_KEY", "sk-canary-preflight")
    fake_llm.fake.api_key = "sk-canary-preflight"
    cfg = _config(tmp_path, **{"judge.model": "openai/gpt-4o", "judge.api_base":
                               fake_llm.api_base, "judge.api_key_env": "VPO_TEST_JUDGE_KEY"})
    findings = run_preflight(cfg)
    assert errors(findings) == []
    answered = next(f for f in findings if f.field == "judge.model")
    assert re.search(r"answered '.+' in [\d.]+ s \(\d+ \+ \d+ tokens, cost \$0\.\d{6}\)",
                     answered.found)
    assert "cost $0.000000" not in answered.found           # priced from litellm's map
    assert sum(fake_llm.fake.requests.values()) == 1        # one tiny request
    offline = run_preflight(cfg, offline=True)
    assert sum(fake_llm.fake.requests.values()) == 1        # --offline: none
    assert any(f.level == "warning" and "--offline" in f.found for f in offline)

    monkeypatch.setenv("VPO_TEST_JUDGE_KEY", "sk-wrong-key-preflight")
    bad = _only_error(run_preflight(cfg))
    assert bad.field == "judge.api_key_env" and "auth" in bad.found
    text = json.dumps([f.__dict__ for f in [*findings, bad]])
    assert "sk-canary-preflight" not in text and "sk-wrong-key-preflight" not in text


def test_judge_without_rate_limit_at_paper_scale(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPO_TEST_JUDGE_KEY", "x")
    cfg = _config(tmp_path, **{"judge.model": "gpt-4o", "judge.api_key_env":
                               "VPO_TEST_JUDGE_KEY", "curate.split.sft": 10_000})
    found = run_checks(cfg, reach=Reach(offline=True))
    limit = [f for f in found if f.field == "judge.requests_per_minute"]
    assert [f.level for f in limit] == ["warning"] and "up to ~32,128 judge calls" in limit[0].found
    assert errors(found) == []                                # warnings do not stop a run
    limited = cfg.model_copy(update={"judge": cfg.judge.model_copy(
        update={"requests_per_minute": 500})})
    assert not [f for f in run_checks(limited, reach=Reach(offline=True))
                if f.field == "judge.requests_per_minute"]


def test_secret_block(tmp_path: Path, prefect_server, fake_llm) -> None:
    from prefect.blocks.system import Secret

    cfg = _config(tmp_path, **{"judge.model": "openai/fake", "judge.api_base":
                               fake_llm.api_base, "judge.api_key_secret": "vpo-test-missing"})
    bad = _only_error(run_preflight(cfg))
    assert bad.field == "judge.api_key_secret" and "'vpo-test-missing'" in bad.found
    Secret(value="sk-secret-preflight").save("vpo-test-preflight", overwrite=True)
    fake_llm.fake.api_key = "sk-secret-preflight"
    good = cfg.model_copy(update={"judge": cfg.judge.model_copy(
        update={"api_key_secret": "vpo-test-preflight"})})
    findings = run_preflight(good)
    assert errors(findings) == [] and fake_llm.fake.outcomes["ok"] == 1


# --------------------------------------------------------------------------- models
def _cache_model(hub: Path, repo: str, files: dict[str, bytes]) -> None:
    """A model in the hub cache's layout, as ``hf download`` leaves it."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("a" * 40)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_wrong_pipeline_id_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _cache_model(tmp_path / "hub", "THUDM/CogVideoX-2b", {"model_index.json": b"{}"})
    cfg = _config(tmp_path, **{"render.pipeline": "THUDM/CogVideoX-2bb"})
    bad = next(f for f in run_checks(cfg) if f.field == "render.pipeline")
    assert bad.level == "error" and "THUDM/CogVideoX-2bb is not in the local" in bad.found
    good = _config(tmp_path, **{"render.pipeline": "THUDM/CogVideoX-2b"})
    found = next(f for f in run_checks(good) if f.field == "render.pipeline")
    assert found.level == "ok" and "in the local cache" in found.found


def test_policy_in_the_cache_is_sized_from_its_weights(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    import numpy as np
    from safetensors.numpy import save

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    weights = save({"a": np.zeros((1000, 500), np.float32), "b": np.zeros(7, np.float32)})
    _cache_model(tmp_path / "hub", "org/tiny-lm", {"config.json": b"{}",
                                                   "model.safetensors": weights})
    findings = run_checks(_config(tmp_path, **{"policy.model": "org/tiny-lm"}))
    assert next(f for f in findings if f.field == "policy.model").level == "ok"
    assert "of 1M parameters" in next(f.found for f in findings if f.found.startswith("needs"))
    missing = _only_error(run_checks(_config(tmp_path, **{"policy.model": "./no/such/model"})))
    assert missing.field == "policy.model" and "does not exist" in missing.found


def test_every_bundled_policy_is_known(tmp_path: Path) -> None:
    """The rehearsal's random tiny Llama passes like the bundled SmolLM2; a typo does not."""
    findings = run_checks(_config(tmp_path, **{"policy.model": "bundled:tiny-llama"}))
    assert next(f for f in findings if f.field == "policy.model").level == "ok"
    bad = _only_error(run_checks(_config(tmp_path, **{"policy.model": "bundled:tiny-lama"})))
    assert "bundled:tiny-llama" in bad.fix and "bundled:smollm2-135m-instruct" in bad.fix


@pytest.mark.parametrize(("sets", "field", "text"), [
    ({"curate.input": "/no/such/queries.csv"}, "curate.input", "no such file"),
    ({"score.backend": "checklist"}, "score.answers_file", "not set"),
    ({"score.backend": "vlm-checklist"}, "score.vlm_model", "not set"),
    ({"score.backend": "visionreward"}, "score.visionreward_python", "not set"),
    ({"score.backend": "visionreward", "score.visionreward_python": sys.executable},
     "score.visionreward_python", "No module named"),
    ({"score.backend": "visionreward", "score.visionreward_python": "/no/python"},
     "score.visionreward_python", "cannot run"),
    ({"judge.model": "local/other"}, "judge.model", "unknown local model"),
])
def test_each_backend_need(tmp_path: Path, sets: dict, field: str, text: str) -> None:
    bad = _only_error(run_checks(_config(tmp_path, **sets)))
    assert bad.field == field and text in bad.found, bad


def test_visionreward_runner_needs_read_from_its_source() -> None:
    from vpo_core.reward.visionreward import RUNNER

    assert runner_needs(RUNNER) == ["decord", "torch", "transformers"]
    assert f'"--model", default="{ScoreConfig().visionreward_model}"' in RUNNER.read_text()


def test_unpinned_visionreward_code_is_a_warning(tmp_path: Path) -> None:
    """VisionReward's CogVLM2 code comes from its hub repo: unpinned, preflight says so."""
    env = tmp_path / "python"   # stands in for VisionReward's environment: imports, 1 GPU
    env.write_text("#!/bin/sh\necho 1\n")
    env.chmod(0o755)
    sets = {"score.backend": "visionreward", "score.visionreward_python": str(env)}
    found = {f.field: f for f in run_checks(_config(tmp_path, **sets))}
    assert found["score.visionreward_python"].level == "ok"
    assert found["score.visionreward_revision"].level == "warning"
    assert "score.visionreward_model" in found
    pinned = run_checks(_config(tmp_path, **sets, **{"score.visionreward_revision": "0a1b2c"}))
    assert "score.visionreward_revision" not in {f.field for f in pinned}


# --------------------------------------------------------------------------- packages, GPU
def test_missing_package_and_gpu_for_vllm(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    found = run_checks(_config(tmp_path, **{"sample.backend": "vllm"}))
    vllm = [f for f in errors(found) if f.field == "sample.backend"]
    assert any("vllm is not installed" in f.found for f in vllm)
    placed = run_checks(_config(tmp_path, **{"sample.backend": "vllm",
                                             "placement.sample": "gpu"}))
    warned = [f for f in placed if f.field == "sample.backend"]
    assert [f.level for f in warned] == ["warning"] and "pool 'gpu'" in warned[0].found


def test_bf16_inline_needs_cuda(tmp_path: Path) -> None:
    count, _ = cuda_devices()
    cfg = _config(tmp_path, **{"train_sft.bf16": True})
    found = [f for f in run_checks(cfg) if f.field == "train_sft.bf16"]
    if count:
        assert [f.level for f in found] == ["ok"]
    else:
        assert [f.level for f in found] == ["error"] and "no CUDA device" in found[0].found
    placed = cfg.model_copy(update={"placement": cfg.placement.model_copy(
        update={"train_sft": "gpu"})})
    assert not [f for f in run_checks(placed) if f.field == "train_sft.bf16"]


def test_deepspeed_found_for_zero(tmp_path: Path) -> None:
    found = run_checks(_config(tmp_path, **{"train_dpo.zero_stage": 3}))
    assert [(f.level, f.field) for f in found if "zero_stage" in f.field] == [
        ("ok", "train_dpo.zero_stage")]


# --------------------------------------------------------------------------- work dir, space
def test_work_dir_that_is_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = _config(tmp_path, work_dir=str(blocker / "work"))
    bad = _only_error(run_checks(cfg))
    assert bad.field == "work_dir" and f"{blocker} is a file" in bad.found


def test_impossible_space_estimate(tmp_path: Path) -> None:
    cfg = _config(tmp_path, **{"render.height": 100_000, "render.width": 100_000})
    bad = _only_error(run_checks(cfg))
    assert bad.field == "work_dir" and "needs ~" in bad.found and "free at" in bad.found
    assert "32 videos x 9 frames x 100000x100000" in bad.found


# --------------------------------------------------------------------------- pools
def test_pool_without_worker_on_a_real_server(tmp_path: Path, prefect_server) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="vpo-test-idle", type="process"),
                                overwrite=True)
    cfg = _config(tmp_path, **{"placement.render": "vpo-test-idle",
                               "placement.score": "vpo-test-absent"})
    bad = {f.found: f for f in errors(run_preflight(cfg))}
    assert len(bad) == 3, bad
    idle = next(f for k, f in bad.items() if "no online worker" in k)
    assert idle.field == "placement.render" and "'vpo-test-idle'" in idle.found
    assert "prefect worker start --pool vpo-test-idle" in idle.fix
    assert any(f.field == "placement.render" and "vpo-step/vpo-test-idle does not exist"
               in k for k, f in bad.items())
    assert any(f.field == "placement.score" and "'vpo-test-absent' (score) does not exist" in k
               for k, f in bad.items())


def test_placement_without_a_server(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: None}):
        bad = _only_error(run_preflight(_config(tmp_path, **{"placement.train_sft": "gpu"})))
    assert bad.field == "placement.train_sft" and "PREFECT_API_URL is not set" in bad.found


# --------------------------------------------------------------------------- commands, flow
def test_vpo_check_exit_codes(tmp_path: Path) -> None:
    work = ["--work-dir", str(tmp_path / "work")]
    done = CliRunner().invoke(app, ["check", *work])
    assert done.exit_code == 0, done.output
    assert "preflight (cpu-tiny): 0 errors, 0 warnings, 9 ok" in done.output
    failed = CliRunner().invoke(app, ["check", *work, "--set", "render.height=100000",
                                      "--set", "render.width=100000"])
    assert failed.exit_code == 1 and "error    work_dir" in failed.output
    bad = CliRunner().invoke(app, ["check", *work, "--set", "render.height=tall"])
    assert bad.exit_code == 2 and "render.height" in bad.output


def test_vpo_run_stops_before_any_stage(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HF_HOME"))}
    env.pop("VPO_TEST_JUDGE_KEY", None)
    env |= {"HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    work = tmp_path / "work"
    done = subprocess.run([*VPO, "run", "--work-dir", str(work), "--set", "judge.model=gpt-4o",
                           "--set", "judge.api_key_env=VPO_TEST_JUDGE_KEY"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "judge.api_key_env" in done.stdout and "no stage was run" in done.stderr
    assert not (work / "data").exists() and not any((work / "results").iterdir())


def test_pipeline_flow_fails_first_with_the_findings_artifact(tmp_path: Path,
                                                              prefect_server) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.pipeline import pipeline_flow

    cfg = _config(tmp_path, **{"judge.model": "gpt-4o",
                               "judge.api_key_env": "VPO_TEST_JUDGE_KEY_UNSET"})
    state = pipeline_flow(cfg, return_state=True)
    assert state.is_failed() and "judge.api_key_env" in state.message
    assert not (tmp_path / "work" / "data").exists()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["preflight"])))
    ours = [a for a in arts if a.flow_run_id == state.state_details.flow_run_id]
    assert len(ours) == 1 and "| error | `judge.api_key_env` |" in ours[0].data


@pytest.mark.slow
def test_shared_storage_probe_through_a_real_worker(tmp_path: Path, prefect_server) -> None:
    """A process worker that sees the work directory at ``worker_view`` (as a worker with
    ``VPO_WORKER_WORK_DIR`` mounting the shared volume does): a parent writing there is
    shared with it, a parent writing elsewhere is not."""
    import signal

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    from flows.step import step_flow
    from tasks.preflight import inspect_pool

    pool, worker_view = "vpo-test-probe", tmp_path / "worker-view"
    with get_client(sync_client=True) as client:   # what `prefect deploy` makes of prefect.yaml
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
        client.create_deployment(
            client.create_flow(step_flow), pool, work_pool_name=pool, path=str(ROOT),
            entrypoint="flows/step.py:step_flow", pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}])
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "VPO_WORKER_WORK_DIR": str(worker_view)}
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool",
                                   pool, "--type", "process"], env=env, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(240):
            if inspect_pool(pool).online_workers:
                break
            time.sleep(0.5)
        shared = run_preflight(_config(tmp_path, work_dir=str(worker_view),
                                       **{"placement.render": pool}))
        probe = [f for f in shared if f.field == "work_dir" and "pool" in f.found]
        assert [f.level for f in probe] == ["ok"], (shared, (tmp_path / "worker.log")
                                                    .read_text()[-3000:])
        assert "read the probe written here" in probe[0].found
        apart = run_preflight(_config(tmp_path, work_dir=str(tmp_path / "parent-view"),
                                      **{"placement.render": pool}))
        bad = _only_error(apart)
        assert bad.field == "work_dir" and f"not shared with pool '{pool}'" in bad.found
        assert "VPO_WORKER_WORK_DIR" in bad.fix
        assert not list((tmp_path / "parent-view" / "preflight").iterdir())  # probe cleared
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
