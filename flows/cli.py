"""The ``vpo`` command line: run the pipeline or one stage on a preset or YAML config.

Prefect is imported only after the work directory's environment is set (PREFECT_HOME,
result store, Hugging Face cache), so nothing is written to the user's home.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from vpo_core.config import PipelineConfig, Stage, load_config, presets
from vpo_core.errors import ConfigError
from vpo_core.workdir import WorkDir, prefect_env

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


def _load(config: str | None, sets: list[str] | None, work_dir: Path | None,
          **extra: Any) -> PipelineConfig:
    overrides = _overrides(sets) | extra
    if work_dir is not None:
        overrides["work_dir"] = str(work_dir)
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    work = WorkDir.at(cfg.work_dir).create()
    os.environ.update(prefect_env(work))
    return cfg.model_copy(update={"work_dir": work.root})


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
        else:
            typer.echo(f"{indent}{name}: {value.rows:,} rows  {value.path}")


@app.command()
def run(config: ConfigOpt = None, force: Annotated[list[Stage] | None, typer.Option(
        "--force", help="Recompute this stage even if cached (repeatable).")] = None,
        work_dir: WorkOpt = None, set_: SetOpt = None) -> None:
    """Run the pipeline (today: curate, sft-data) on a preset or YAML config, resuming from
    cache."""
    cfg = _load(config, set_, work_dir)
    from flows.pipeline import pipeline_flow

    outputs = _finish(pipeline_flow(cfg, force=force or [], return_state=True), "pipeline")
    typer.echo(f"pipeline finished ({cfg.preset}); work directory {cfg.work_dir}")
    _print_outputs(outputs)


@app.command()
def curate(input: Annotated[str | None, typer.Option(
        "--input", "-i", help="CSV/TSV/Parquet/JSON/JSONL/TXT file of queries, "
        "'hf:<dataset id>', or 'bundled' (default).")] = None,
        config: ConfigOpt = None,
        force: Annotated[bool, typer.Option("--force", help="Recompute every step.")] = False,
        work_dir: WorkOpt = None, set_: SetOpt = None) -> None:
    """Curate user queries: normalise, filter, deduplicate, label safety, split."""
    extra = {"curate.input": input} if input else {}
    cfg = _load(config, set_, work_dir, **extra)
    from flows.curate import curate_flow

    outputs = _finish(curate_flow(cfg, force=force, return_state=True), "curate")
    _print_outputs(outputs)


@app.command("sft-data")
def sft_data(config: ConfigOpt = None,
             force: Annotated[bool, typer.Option("--force", help="Recompute every shard.")]
             = False, work_dir: WorkOpt = None, set_: SetOpt = None) -> None:
    """Build the SFT data: teacher prompts, judge critiques and refinements of the SFT split
    (curating first if needed)."""
    cfg = _load(config, set_, work_dir)
    from flows.sft_data import sft_data_flow

    outputs = _finish(sft_data_flow(cfg, force=force, return_state=True), "sft-data")
    _print_outputs(outputs)


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved configuration as YAML."""
    try:
        cfg = load_config(config, _overrides(set_))
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def main() -> None:
    """Entry point of the ``vpo`` script."""
    sys.exit(app())
