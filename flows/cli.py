"""The ``vpo`` command line: run the pipeline or one stage on a preset or YAML config.

Prefect is imported only after the work directory's environment is set (PREFECT_HOME,
result store, Hugging Face cache), so nothing is written to the user's home.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
import yaml

from vpo_core.config import PipelineConfig, Stage, explain, load_config, presets
from vpo_core.errors import ConfigError
from vpo_core.stages import STAGES, Input, StageSpec
from vpo_core.workdir import WorkDir, activate, prefect_env

app = typer.Typer(help="VPO: train a video prompt optimizer with Prefect-orchestrated "
                  "stages.", no_args_is_help=True, add_completion=False)
config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[str | None, typer.Option(
    "--config", "-c", help=f"Preset name ({', '.join(presets())}) or a YAML file; "
    "default cpu-tiny.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a setting, e.g. --set curate.split.sft=200 (repeatable).")]
WorkOpt = Annotated[Path | None, typer.Option(
    "--work-dir", help="Work directory for outputs, Prefect's home and caches.")]


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. curate.split.sft=200")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _config(config: str | None, sets: list[str] | None, work_dir: Path | None,
            **extra: Any) -> PipelineConfig:
    """The configuration asked for; exit 2 when it does not validate."""
    overrides = _overrides(sets) | extra
    if work_dir is not None:
        overrides["work_dir"] = str(work_dir)
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def _activate(cfg: PipelineConfig) -> PipelineConfig:
    """Create the work directory and root Prefect and the caches in it."""
    work = activate(cfg.work_dir)
    os.environ.update(prefect_env(work))
    return cfg.model_copy(update={"work_dir": work.root})


def _load(config: str | None, sets: list[str] | None, work_dir: Path | None,
          **extra: Any) -> PipelineConfig:
    return _activate(_config(config, sets, work_dir, **extra))


def _preflight(cfg: PipelineConfig, offline: bool = False) -> bool:
    """Print the preflight findings of ``cfg``; False when one is an error. Prefect's home
    goes in the work directory, as for a run (the check reports one that cannot be
    made)."""
    work = WorkDir.at(cfg.work_dir)
    with contextlib.suppress(OSError):
        work.create()
    os.environ.update(prefect_env(work))
    from tasks.preflight import run_preflight
    from vpo_core.preflight import counts, errors, text_table

    start = time.perf_counter()
    findings = run_preflight(cfg, offline=offline)
    typer.echo(f"preflight ({cfg.preset}): {counts(findings)} "
               f"({time.perf_counter() - start:.1f} s)\n{text_table(findings)}")
    return not errors(findings)


def _finish(state: Any, what: str) -> dict[str, Any]:
    """Print where the outputs are, or the failure, and set the exit code."""
    if not state.is_completed():
        typer.secho(f"{what} failed: {state.message}", fg="red", err=True)
        try:
            state.result()
        except Exception as exc:
            typer.secho(f"  {type(exc).__name__}: {exc}", fg="red", err=True)
        raise typer.Exit(1)
    return state.result()


def _print_outputs(outputs: dict[str, Any], indent: str = "  ") -> None:
    for name, value in outputs.items():
        if isinstance(value, dict):
            typer.echo(f"{indent}{name}:")
            _print_outputs(value, indent + "  ")
        elif isinstance(value, str):               # a hub id (the policy's base)
            typer.echo(f"{indent}{name}: {value}")
        elif value.rows is None:
            typer.echo(f"{indent}{name}: {value.path}")
        else:
            typer.echo(f"{indent}{name}: {value.rows:,} rows  {value.path}")


@app.command()
def run(config: ConfigOpt = None, force: Annotated[list[Stage] | None, typer.Option(
        "--force", help="Recompute this stage even if cached (repeatable).")] = None,
        work_dir: WorkOpt = None, set_: SetOpt = None,
        no_check: Annotated[bool, typer.Option(
            "--no-check", help="Skip the preflight checks (vpo check) before the first "
            "stage.")] = False,
        until: Annotated[Stage | None, typer.Option(
            "--until", help="Stop after this stage.")] = None) -> None:
    """Run the whole pipeline (curate → sft-data → train-sft → sample → text-feedback → render
    → score → pairs → train-dpo → evaluate) on a preset or YAML config, resuming from
    cache. The preflight checks (vpo check) come first: an error stops it before any
    stage."""
    cfg = _config(config, set_, work_dir)
    if not no_check and not _preflight(cfg):
        typer.secho("preflight found errors: no stage was run (fix them, or --no-check)",
                    fg="red", err=True)
        raise typer.Exit(1)
    cfg = _activate(cfg)
    from flows.pipeline import pipeline_flow

    start = time.perf_counter()
    outputs = _finish(pipeline_flow(cfg, force=force or [], check=False, until=until,
                                    return_state=True), "pipeline")
    typer.echo(f"\npipeline finished ({cfg.preset}) in {time.perf_counter() - start:.0f} s; "
               f"work directory {cfg.work_dir}")
    _print_outputs(outputs)
    report = outputs.get("evaluate", {}).get("eval_report")
    if report is not None:
        typer.echo("\n" + Path(report.path).read_text(encoding="utf-8"))
    typer.echo(f"Inspect runs, artifacts and logs in the Prefect UI: vpo ui up --work-dir "
               f"{cfg.work_dir} (http://127.0.0.1:4200), then vpo ui down --work-dir "
               f"{cfg.work_dir}.")


@app.command()
def check(config: ConfigOpt = None, work_dir: WorkOpt = None, set_: SetOpt = None,
          offline: Annotated[bool, typer.Option(
              "--offline", help="No network: the judge gets no request and hub ids are "
              "looked up in the local cache only.")] = False) -> None:
    """Check, before running, what the configuration's stages need: API keys, the judge
    (one tiny request), models, packages, GPUs, work pools and their workers, the work
    directory and its free space. Exit 0 with no error, 1 with errors, 2 for a bad
    configuration."""
    if not _preflight(_config(config, set_, work_dir), offline):
        raise typer.Exit(1)


ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute even if cached.")]
UpstreamOpt = Annotated[bool, typer.Option(
    "--with-upstream", help="Run the stages before it first (the pipeline through this "
    "stage) instead of reading their outputs from the work directory.")]


def _input_ref(item: Input, value: Path | None) -> Any:
    """What ``--<input> PATH`` names: a table file or a model folder, by content."""
    from vpo_core.tables import ref_for, ref_for_dir

    if value is None:
        return None
    if item.kind == "model":
        if not value.is_dir():
            raise _fail(f"--{item.param.replace('_', '-')} {value}: not a model folder")
        return ref_for_dir(value)
    if not value.is_file():
        raise _fail(f"--{item.param.replace('_', '-')} {value}: no such {item.kind} file")
    return ref_for(value, item.kind)


def _run_stage(stage: StageSpec, cfg: PipelineConfig, force: bool, with_upstream: bool,
               given: dict[str, Any], extra: dict[str, Any]) -> None:
    """Run one stage's flow on inputs given or found in the work directory's index of
    stage outputs, or, with ``with_upstream``, the pipeline through it."""
    from vpo_core.stage_index import MissingInput, stage_inputs

    if with_upstream:
        if any(v is not None for v in given.values()):
            raise _fail("--with-upstream runs the stages that make the inputs: give no "
                        "input paths with it")
        from flows.pipeline import pipeline_flow

        state = pipeline_flow(cfg, force=[Stage(stage.name)] if force else [], check=False,
                              until=Stage(stage.name), return_state=True)
        _print_outputs(_finish(state, stage.name).get(stage.name, {}))
        return
    try:
        stage_inputs(cfg, stage.name, **given)
    except MissingInput as exc:
        raise _fail(str(exc)) from None
    from flows.chain import stage_flow

    state = stage_flow(stage)(cfg, force=force, return_state=True, **given, **extra)
    _print_outputs(_finish(state, stage.name))


def _stage_command(stage: StageSpec, options: dict[str, Any] | None = None,
                   extra: Callable[[dict[str, Any]], tuple[dict, dict]] | None = None
                   ) -> None:
    """The ``vpo <stage>`` command, from the registry: the common options, one
    ``--<input> PATH`` per declared input, and ``options`` of its own that ``extra`` turns
    into (config overrides, flow arguments)."""
    params = {"config": (ConfigOpt, None), "force": (ForceOpt, False),
              "work_dir": (WorkOpt, None), "set_": (SetOpt, None),
              "with_upstream": (UpstreamOpt, False)}
    for item in stage.inputs:
        flag = item.param.replace("_", "-")
        what = "a model folder" if item.kind == "model" else f"a {item.kind} Parquet file"
        params[item.param] = (Annotated[Path | None, typer.Option(
            f"--{flag}", help=f"{what} (default: the {item.output} the {item.stage} stage "
            "made under this configuration).")], None)
    params |= options or {}

    def command(**kw: Any) -> None:
        given = {i.param: _input_ref(i, kw.pop(i.param)) for i in stage.inputs}
        overrides, flow_args = extra(kw) if extra else ({}, {})
        cfg = _load(kw["config"], kw["set_"], kw["work_dir"], **overrides)
        _run_stage(stage, cfg, kw["force"], kw["with_upstream"], given, flow_args)

    command.__doc__ = stage.help
    command.__signature__ = inspect.Signature(
        [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d)
         for k, (a, d) in params.items()])
    command.__annotations__ = {k: a for k, (a, _) in params.items()}
    app.command(stage.name)(command)


def _curate_input(kw: dict[str, Any]) -> tuple[dict, dict]:
    return ({"curate.input": kw["input"]} if kw["input"] else {}), {}


def _eval_options(kw: dict[str, Any]) -> tuple[dict, dict]:
    from vpo_core.tables import ref_for_dir

    overrides = {"evaluate.suite": kw["suite"]} if kw["suite"] else {}
    if not kw["model"]:
        return overrides, {}
    named = {}
    for item in kw["model"]:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            raise _fail(f"--model {item!r}: expected NAME=MODEL_DIR (an existing folder)")
        named[name] = ref_for_dir(path)
    return overrides, {"models": named}


_OWN_OPTIONS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], tuple[dict, dict]]]] = {
    "curate": ({"input": (Annotated[str | None, typer.Option(
        "--input", "-i", help="CSV/TSV/Parquet/JSON/JSONL/TXT file of queries, "
        "'hf:<dataset id>', or 'bundled' (default).")], None)}, _curate_input),
    "evaluate": ({"model": (Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="NAME=MODEL_DIR of an optimizer to compare (repeatable), e.g. "
        "sft=vpo-work/data/train-sft/run-…/model; default: the models trained under this "
        "configuration.")], None),
                  "suite": (Annotated[str | None, typer.Option(
                      "--suite", help="The prompts (evaluate.suite): heldout, vbench, "
                      "monetbench:PATH, t2vsafetybench:PATH, or a .txt/.json/.jsonl/.csv/"
                      ".parquet file.")], None)}, _eval_options),
}
for _stage in STAGES:
    _stage_command(_stage, *_OWN_OPTIONS.get(_stage.name, ({}, None)))


def _latest_model(work: Path) -> str | None:
    found = sorted((work / "data").glob("train-*/*/model/config.json"),
                   key=lambda p: p.stat().st_mtime)
    return str(found[-1].parent) if found else None


ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="Model folder, hub id, 'bundled:smollm2-135m-instruct', or 'latest' "
    "(newest trained model in the work directory).")]
DeviceOpt = Annotated[str, typer.Option(
    help="auto (the GPU when there is one), cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(
    help="auto (bfloat16 on a GPU that has it, float32 on the CPU), float32, bfloat16 or "
    "float16.")]


def _model_path(model: str, work: WorkDir) -> str:
    """What --model names, with 'latest' and the bundled model resolved (the work
    directory's environment set first)."""
    from vpo_core.optimizer import resolve_model

    os.environ.update(prefect_env(work))
    if model == "latest":
        model = _latest_model(work.root) or "bundled:smollm2-135m-instruct"
        typer.echo(f"model: {model}", err=True)
    return resolve_model(model, work.models)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(code)


@app.command()
def optimize(query: Annotated[str | None, typer.Argument(help="A query to optimize.")] = None,
             model: ModelOpt = "latest",
             iterations: Annotated[int, typer.Option(
                 "--iterations", "-n", min=1, help="Re-optimise the output this many times "
                 "(the paper's iterative refinement).")] = 1,
             temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
             top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
             seed: int = 0, max_new_tokens: int = 192,
             repetition_penalty: Annotated[float, typer.Option(
                 min=1.0, help="Penalty on tokens the answer already has (1.0: off).")] = 1.0,
             no_repeat_ngram: Annotated[int, typer.Option(
                 min=0, help="No n-gram of this size twice in the answer (0: off).")] = 0,
             input: Annotated[Path | None, typer.Option(
                 "--input", "-i", help="Batch mode: a TXT/JSON/JSONL/CSV/Parquet file of "
                 "queries.")] = None,
             output: Annotated[Path | None, typer.Option(
                 "--output", "-o", help="Batch mode: Parquet file to write.")] = None,
             device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
             work_dir: WorkOpt = None) -> None:
    """Rewrite queries into video prompts with a trained optimizer (or any causal LM)."""
    from vpo_core.curate.normalize import normalize_series
    from vpo_core.curate.sources import read_raw
    from vpo_core.optimizer import Optimizer, Sampling
    from vpo_core.tables import write_table

    if (query is None) == (input is None) or (input is not None and output is None):
        raise _fail("give a QUERY, or --input FILE with --output FILE.parquet")
    model = _model_path(model, WorkDir.at(work_dir or "vpo-work"))
    try:
        opt = Optimizer(model, device=device, dtype=dtype)
    except (OSError, ValueError, ConfigError) as exc:
        raise _fail(f"cannot load the model {model!r}: {exc}") from None
    sampling = Sampling(temperature, top_p, max_new_tokens, seed, repetition_penalty,
                        no_repeat_ngram)
    if query is not None:
        for i, prompt in enumerate(opt.optimize([query], iterations, sampling)[0], 1):
            typer.echo(f"[{i}] {prompt}" if iterations > 1 else prompt)
        return
    raw = read_raw(input).filter(pl.col("read_error").is_null())
    queries = normalize_series(raw.get_column("prompt")).to_list()
    results = opt.optimize(queries, iterations, sampling)
    table = pl.DataFrame([{"query": q, "iteration": i, "prompt": p, "model": model,
                           "temperature": temperature, "top_p": top_p, "seed": seed}
                          for q, rounds in zip(queries, results, strict=True)
                          for i, p in enumerate(rounds, 1)])
    ref = write_table(table, output, "optimized")
    typer.echo(f"{len(queries):,} queries x {iterations} rounds -> {ref.path}")


@app.command()
def serve(model: ModelOpt = "latest",
          host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every "
                                            "interface).")] = "127.0.0.1",
          port: int = 8000, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
          engine: Annotated[str, typer.Option(
              help="auto (vLLM when installed), vllm or transformers.")] = "auto",
          served_model_name: Annotated[str | None, typer.Option(
              help="The model's name in /v1/models and answers (default: its path), as "
              "vllm serve --served-model-name.")] = None,
          api_key_env: Annotated[str | None, typer.Option(
              help="Environment variable holding the API key: every route but /health "
              "then wants 'Authorization: Bearer <key>'.")] = None,
          max_batch: Annotated[int, typer.Option(
              min=1, help="Most rows in one generate call.")] = 32,
          wait_ms: Annotated[float, typer.Option(
              min=0.0, help="How long a batch waits for more requests.")] = 10.0,
          max_queue: Annotated[int, typer.Option(
              min=1, help="Rows admitted at once (waiting or generating); more: 429 with "
              "Retry-After.")] = 256,
          request_timeout_s: Annotated[float, typer.Option(
              min=0.001, help="A request not answered by then gets 504.")] = 600.0,
          max_new_tokens: Annotated[int, typer.Option(
              min=1, help="Largest token budget a request may ask for.")] = 2048,
          default_new_tokens: Annotated[int, typer.Option(
              min=1, help="Token budget of a request that names none.")] = 256,
          max_query_chars: Annotated[int, typer.Option(min=1)] = 2000,
          max_prompt_chars: Annotated[int, typer.Option(
              min=1, help="Longest conversation taken as given (all messages).")] = 16_000,
          max_body_bytes: Annotated[int, typer.Option(
              min=1, help="Largest request body, chunked or not (413).")] = 1 << 20,
          work_dir: WorkOpt = None) -> None:
    """Serve the optimizer over HTTP: POST /v1/optimize ({"query": …} or {"queries": […]}),
    OpenAI-compatible POST /v1/chat/completions (the user message is the raw query, or
    messages that hold their own instruction are used as given), GET /health, GET /metrics
    (Prometheus). The instruction is applied server-side; concurrent requests are batched."""
    import uvicorn

    from vpo_core.serve import Limits, create_app, load_engine

    if engine not in ("auto", "vllm", "transformers"):
        raise _fail(f"--engine {engine!r}: expected auto, vllm or transformers")
    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise _fail(f"--api-key-env {api_key_env}: that environment variable is not set")
    if default_new_tokens > max_new_tokens:
        raise _fail(f"--default-new-tokens {default_new_tokens} is above --max-new-tokens "
                    f"{max_new_tokens}")
    model = _model_path(model, WorkDir.at(work_dir or "vpo-work"))
    try:
        loaded, name = load_engine(model, engine, device, dtype, max_batch)
    except (OSError, ValueError, ConfigError) as exc:
        raise _fail(f"cannot load the model {model!r}: {exc}") from None
    limits = Limits(max_query_chars, max_new_tokens=max_new_tokens,
                    default_new_tokens=default_new_tokens, max_body_bytes=max_body_bytes,
                    max_prompt_chars=max_prompt_chars, max_queue=max_queue,
                    request_timeout_s=request_timeout_s)
    app_ = create_app(loaded, name, max_batch=max_batch, wait_ms=wait_ms, limits=limits,
                      api_key=api_key, served_name=served_model_name)
    typer.echo(f"serving {model} ({name}) on http://{host}:{port}: POST /v1/optimize, "
               "POST /v1/chat/completions, GET /health, GET /metrics"
               + (" (API key required)" if api_key else ""), err=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def export(source: Annotated[Path, typer.Argument(
        help="A model folder, or data: a sft_examples / dpo_pairs / eval_judgements Parquet "
        "file, a stage's output folder, or a work directory (its newest tables).")],
        to: Annotated[Path, typer.Option("--to", help="Folder to write.")],
        push: Annotated[str | None, typer.Option(
            "--push", help="Also upload what the export wrote (only that) to the Hugging "
            "Face Hub as ORG/NAME, a private repository unless --public.")] = None,
        public: Annotated[bool, typer.Option(
            "--public", help="With --push: a public repository.")] = False,
        eval_dir: Annotated[Path | None, typer.Option(
            "--eval", help="Models: an evaluate run's folder whose tables go in the card.")]
        = None,
        method: Annotated[str | None, typer.Option(
            help="Models: this model's method name in that evaluation (default: sft or dpo, "
            "from its card).")] = None,
        dataset: Annotated[list[str] | None, typer.Option(
            "--dataset", help="Models: Hub id of the data it was trained on (an exported "
            "dataset), for the card's `datasets:` (VidProM is always there); repeatable.")]
        = None,
        config: Annotated[str | None, typer.Option(
            "--config", "-c", help="Data: the preset or YAML that produced it; the settings "
            "that decide the data are recorded (no endpoints, keys or paths).")] = None,
        set_: SetOpt = None) -> None:
    """Export data as a Hugging Face dataset folder or a trained model as a model folder,
    each with its card (licence, attribution, usage); --push uploads it, privately."""
    from vpo_core import export as hub
    from vpo_core.errors import InputError

    try:
        if (source / "config.json").is_file():
            done = hub.export_model(source, to, eval_dir, method, dataset)
            typer.echo(f"model -> {to}")
        else:
            cfg = load_config(config, _overrides(set_)).model_dump(mode="json") \
                if config or set_ else None
            done = hub.export_dataset(source, to, cfg)
            typer.echo(f"dataset -> {to}: " + ", ".join(f"{t} {n:,} rows"
                                                       for t, n in done.rows.items()))
    except (InputError, ConfigError) as exc:
        raise _fail(str(exc)) from None
    if push:
        from huggingface_hub import constants

        plan = hub.upload_plan(done, push, public)
        if constants.HF_HUB_OFFLINE:
            raise _fail(f"--push {push}: HF_HUB_OFFLINE is set; unset it (and log in with "
                        "`huggingface-cli login`) to upload; the folder is written", 1)
        try:
            typer.echo(f"pushed ({'public' if public else 'private'}, {len(plan.files)} "
                       f"files): {hub.push(done, plan)}")
        except Exception as exc:  # network, auth, permissions: say it, keep the folder
            raise _fail(f"--push {push} failed ({type(exc).__name__}: {exc}); the folder "
                        f"{to} is written", 1) from None


ui_app = typer.Typer(help="A local Prefect UI: server, work pools, deployments, workers.",
                     no_args_is_help=True)
app.add_typer(ui_app, name="ui")


@ui_app.command("up")
def ui_up(work_dir: WorkOpt = None, port: int = 4200,
          workers: Annotated[bool, typer.Option(help="Start a worker per pool.")] = True,
          database: Annotated[str | None, typer.Option(
              "--database", help="The server's database: postgresql+asyncpg://USER@HOST:PORT/"
              "DB (password from PGPASSWORD), instead of SQLite in the work directory.")]
          = None,
          gpus: Annotated[int, typer.Option(
              "--gpus", min=0, help="GPUs of this host: one gpu worker pinned to each "
              "(CUDA_VISIBLE_DEVICES) and a gpu-all worker for multi-GPU training, sharing "
              "them through a global concurrency limit. 0: one unpinned gpu worker.")] = 0
          ) -> None:
    """Start a Prefect server on 127.0.0.1, create the cpu and gpu pools, deploy every flow
    of prefect.yaml and start the workers; print the UI address."""
    from flows.ui import up

    work = WorkDir.at(work_dir or "vpo-work")
    try:
        state = up(work, port, workers, database=database, gpus=gpus)
    except (RuntimeError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Prefect UI: {state['url']}   (API {state['api']})")
    typer.echo(f"Run the pipeline: PREFECT_API_URL={state['api']} .venv/bin/prefect "
               "deployment run vpo-pipeline/cpu-tiny --watch   (or Run in the UI)")
    typer.echo(f"Logs: {work.root / 'ui'}.   Stop everything: vpo ui down")


@ui_app.command("down")
def ui_down(work_dir: WorkOpt = None) -> None:
    """Stop the workers and the server that `vpo ui up` started."""
    from flows.ui import down

    stopped = down(WorkDir.at(work_dir or "vpo-work"))
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@ui_app.command("status")
def ui_status(work_dir: WorkOpt = None) -> None:
    """Whether the server answers and which started processes are alive."""
    from flows.ui import status

    typer.echo(yaml.safe_dump(status(WorkDir.at(work_dir or "vpo-work")), sort_keys=False))


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None,
                explain_: Annotated[bool, typer.Option(
                    "--explain", help="Every setting with its description, its default and "
                    "the value here ('*' where they differ).")] = False) -> None:
    """Print the resolved configuration as YAML."""
    try:
        cfg = load_config(config, _overrides(set_))
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    if not explain_:
        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return
    for row in explain(cfg):
        mark = "*" if row["value"] != row["default"] else " "
        typer.echo(f"{mark} {row['field']} = {json.dumps(row['value'])}"
                   + (f"  (default {json.dumps(row['default'])})" if mark == "*" else ""))
        typer.echo(f"      {row['description']}")


def main() -> None:
    """Entry point of the ``vpo`` script: first the allocator settings (a re-exec, once;
    see vpo_core.memory), then the command; Ctrl-C and SIGTERM stop it promptly."""
    from flows.stop import install
    from vpo_core.memory import reexec_with_allocator

    reexec_with_allocator()
    install()
    sys.exit(app())


if __name__ == "__main__":
    main()
