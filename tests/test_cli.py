"""The ``vpo`` command line, as a user runs it: help, config, and real runs in a fresh
process with its own ephemeral Prefect server and nothing written to the home folder."""

import os
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from flows.cli import app

VPO = [sys.executable, "-c", "from flows.cli import main; main()"]


def _help(*args: str) -> str:
    out = CliRunner().invoke(app, [*args, "--help"])
    assert out.exit_code == 0
    return " ".join(out.output.split())


def test_help_says_what_each_command_does() -> None:
    assert "run" in _help() and "curate" in _help()
    assert "resuming from cache" in _help("run")
    assert "normalise, filter, deduplicate, label safety, split" in _help("curate")


def test_config_show_resolves_presets_and_overrides() -> None:
    out = CliRunner().invoke(app, ["config", "show", "--config", "paper",
                                   "--set", "curate.split.eval=7"])
    assert out.exit_code == 0
    cfg = yaml.safe_load(out.output)
    assert cfg["train_sft"]["trl"]["learning_rate"] == 2e-6 and cfg["curate"]["split"]["eval"] == 7
    bad = CliRunner().invoke(app, ["config", "show", "--set", "curate.split.sft=lots"])
    assert bad.exit_code == 2 and "curate.split.sft" in bad.output


def _vpo(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HF_HOME"))}
    env |= {"HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*VPO, *args], env=env, capture_output=True, text=True, timeout=300)


def test_curate_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    queries = tmp_path / "q.txt"
    queries.write_text("a red fox runs through fresh snow at dawn\n"
                       "a red fox runs through fresh snow at dawn, 4k\n"
                       "a spaceship lands on a purple desert planet -ar 16:9\n"
                       "katrina kaif naked\n")
    work = tmp_path / "work"
    done = _vpo(["curate", "--input", str(queries), "--work-dir", str(work),
                 "--set", "curate.split.sft=2", "--set", "curate.split.dpo=1",
                 "--set", "curate.split.eval=0", "--set", "curate.safety.llm_recheck=false"],
                home)
    assert done.returncode == 0, done.stderr
    assert "queries: 3 rows" in done.stdout and "rejects: 1 rows" in done.stdout
    assert (work / "prefect").is_dir() and any((work / "results").iterdir())
    assert list(home.iterdir()) == []                        # nothing in the user's home

    bad = tmp_path / "bad.csv"
    bad.write_text("uuid,text\n1,a cat\n")
    failed = _vpo(["curate", "--input", str(bad), "--work-dir", str(work)], home)
    assert failed.returncode == 1
    assert str(bad) in failed.stderr and "missing the prompt column 'prompt'" in failed.stderr
