"""SFT and DPO with trl on the bundled SmolLM2: loss falls, only answers carry loss, the
saved model reloads and generates, a killed run resumes at its step, DPO raises the
margin, the two-process ZeRO-3 launcher trains a model that reloads, and the optimizer
CLI rewrites queries (single, batch, iterations)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from flows.cli import app
from vpo_core.config import TrainDpoConfig, TrainSftConfig
from vpo_core.models.bundled import bundled_model_dir
from vpo_core.optimizer import Optimizer, Sampling
from vpo_core.prompts.templates import optimizer_messages
from vpo_core.tables import read_table, write_table
from vpo_core.training.launch import accelerate_config, run_training
from vpo_core.training.trainer import PROGRESS, TrainSpec, build_trainer, train

ROOT = Path(__file__).resolve().parents[1]
ANSWERS = {
    "a cat on a roof": "A ginger cat naps on a sunny terracotta roof, slow pan, warm light.",
    "city at night": "Neon-lit city street at night, rain reflections, slow dolly forward.",
    "a red car": "A glossy red sports car drives along a coastal road at sunset.",
    "waves": "Turquoise waves roll onto a white sand beach, aerial shot, calm morning.",
}


def _sft_examples(path: Path) -> Path:
    """Four usable rows and one without a final prompt, in the sft_examples schema."""
    rows = [{"query_id": f"q{i}", "query": q, "shard": 0, "generated": a, "generation": a,
             "critique": None, "judgement": "yes", "refinement": None, "refined": None,
             "generation_status": "ok", "critique_status": "ok", "refine_status": "skipped",
             "final_prompt": a, "status": "ok", "fallback_parse": False, "model": "t",
             "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0, "calls": 2,
             "generation_checks": [], "final_checks": [], "error": None, "cost_saved": 0.0,
             "cached_calls": 0}
            for i, (q, a) in enumerate(ANSWERS.items())]
    rows.append({**rows[0], "query_id": "q9", "final_prompt": None,
                 "status": "error:unparseable"})
    write_table(pl.DataFrame(rows), path, "sft_examples")
    return path


def _dpo_pairs(path: Path) -> Path:
    """Chosen = the detailed answer, rejected = a lazy one, in the dpo_pairs schema."""
    rows = [{"prompt": optimizer_messages(q),
             "chosen": [{"role": "assistant", "content": a}],
             "rejected": [{"role": "assistant", "content": f"{q}. {q}."}],
             "query_id": f"q{i}", "query": q, "source": "text", "chosen_score": None,
             "rejected_score": None}
            for i, (q, a) in enumerate(ANSWERS.items())]
    write_table(pl.DataFrame(rows), path, "dpo_pairs")
    return path


def _spec(kind: str, base: str, data: Path, out: Path, **train: object) -> TrainSpec:
    """A spec from project knobs and trl fields together (split by the section's fields)."""
    train = {"global_batch_size": 4, "per_device_train_batch_size": 4, **train}
    cls = TrainSftConfig if kind == "sft" else TrainDpoConfig
    cfg = cls(**{k: v for k, v in train.items() if k in cls.model_fields},
              trl={k: v for k, v in train.items() if k not in cls.model_fields})
    return TrainSpec(kind, base, str(data), str(out), cfg.model_dump(), 256, 0)


@pytest.fixture(scope="module")
def base(bundled_models: Path) -> str:
    return str(bundled_model_dir(bundled_models))


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, base: str) -> tuple[TrainSpec, dict, list[dict]]:
    """SFT on two repeated batches for 6 steps (checkpoint every 2), killed with SIGKILL after
    step 3 is logged, then run again to the end."""
    tmp = tmp_path_factory.mktemp("sft")
    spec = _spec("sft", base, _sft_examples(tmp / "sft.parquet"), tmp / "run",
                 global_batch_size=2, per_device_train_batch_size=2, learning_rate=5e-5,
                 max_steps=6, save_steps=2, warmup_steps=0.0)
    Path(spec.output_dir).mkdir()
    spec.save(tmp / "spec.json")
    proc = subprocess.Popen([sys.executable, "-m", "vpo_core.training", "--spec",
                             str(tmp / "spec.json")], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = Path(spec.output_dir) / PROGRESS
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and any(json.loads(line).get("step", 0) >= 3
                                     for line in progress.read_text().splitlines()):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [json.loads(line) for line in progress.read_text().splitlines()]
    assert not (Path(spec.output_dir) / "model").exists()     # it really died mid-run
    return spec, train(spec), before


def test_sft_loss_goes_down_on_repeated_batches(killed_and_resumed) -> None:
    _, metrics, _ = killed_and_resumed
    losses = [h["loss"] for h in metrics["history"]]
    assert metrics["rows"] == 4                                 # the unusable row is left out
    assert (losses[-1] + losses[-2]) < 0.7 * (losses[0] + losses[1])   # same two batches


def test_killed_run_resumes_at_its_last_checkpoint(killed_and_resumed) -> None:
    spec, metrics, before = killed_and_resumed
    done = max(h["step"] for h in before)
    resumed_at = int(Path(metrics["resumed_from"]).name.split("-")[1])
    assert resumed_at == done - done % 2 and resumed_at >= 2   # last checkpoint, not step 0
    assert metrics["steps"] == 6
    after = [json.loads(line) for line in (Path(spec.output_dir) / PROGRESS).read_text()
             .splitlines()][len(before):]
    assert [h["step"] for h in after if "loss" in h] == list(range(resumed_at + 1, 7))


def test_saved_model_reloads_and_generates(killed_and_resumed) -> None:
    spec, metrics, _ = killed_and_resumed
    model = Path(spec.output_dir) / "model"
    names = {p.name for p in model.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)   # no pickles
    assert not (Path(spec.output_dir) / "checkpoints").exists()   # resume state dropped
    assert (Path(spec.output_dir) / "loss.png").stat().st_size > 1000
    card = (model / "README.md").read_text()
    assert metrics["data_sha256"] in card and "learning_rate" in card
    [[prompt]] = Optimizer(str(model)).optimize(["a cat on a roof"],
                                                sampling=Sampling(max_new_tokens=24))
    assert prompt.strip()


def test_only_answer_tokens_carry_loss(tmp_path: Path, base: str) -> None:
    spec = _spec("sft", base, _sft_examples(tmp_path / "sft.parquet"), tmp_path / "run")
    trainer = build_trainer(spec)
    batch = next(iter(trainer.get_train_dataloader()))
    tok = trainer.processing_class
    answers = set(ANSWERS.values())
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        labelled = ids[labels != -100]
        text = tok.decode(labelled, skip_special_tokens=True).strip()
        assert text in answers                          # the answer and nothing before it
        first = int((labels != -100).nonzero()[0])
        assert "assistant" in tok.decode(ids[:first])[-20:]   # prompt ends at the answer


def test_dpo_raises_the_margin_of_its_pairs(tmp_path: Path, base: str) -> None:
    spec = _spec("dpo", base, _dpo_pairs(tmp_path / "pairs.parquet"), tmp_path / "dpo",
                 global_batch_size=2, per_device_train_batch_size=2, learning_rate=2e-5,
                 max_steps=3, save_steps=10, warmup_steps=0.0)
    metrics = run_training(spec)
    margins = [h["rewards/margins"] for h in metrics["history"]]
    assert margins[0] == pytest.approx(0.0, abs=1e-3)          # policy == reference at first
    assert margins[-1] > 0.1
    assert metrics["final"]["rewards/accuracies"] == 1.0
    for key in ("logps/chosen", "logps/rejected", "loss"):
        assert key in metrics["final"]


def test_accelerate_config_follows_the_training_section() -> None:
    spec = TrainSpec("sft", "m", "d", "o", TrainSftConfig(
        num_processes=4, zero_stage=2, offload="cpu", bf16=True).model_dump(), 64, 0)
    gpu = accelerate_config(spec, cuda=True)
    assert gpu["num_processes"] == 4 and gpu["mixed_precision"] == "bf16"
    assert gpu["deepspeed_config"]["zero_stage"] == 2
    assert gpu["deepspeed_config"]["offload_optimizer_device"] == "cpu"
    assert gpu["deepspeed_config"]["offload_param_device"] == "none"   # ZeRO-3 only
    cpu = accelerate_config(spec, cuda=False)
    assert cpu["use_cpu"] and cpu["mixed_precision"] == "no"
    plain = TrainSpec("sft", "m", "d", "o", TrainSftConfig(num_processes=2).model_dump(), 64, 0)
    assert accelerate_config(plain, cuda=False)["distributed_type"] == "MULTI_CPU"


@pytest.mark.slow
def test_two_process_zero3_trains_and_saves_a_model_that_reloads(tmp_path: Path,
                                                                 base: str) -> None:
    spec = _spec("sft", base, _sft_examples(tmp_path / "sft.parquet"), tmp_path / "z3",
                 global_batch_size=2, per_device_train_batch_size=1, max_steps=2, num_processes=2,
                 zero_stage=3,
                 learning_rate=5e-5)
    seen: list[dict] = []
    metrics = run_training(spec, seen.append)
    assert metrics["steps"] == 2 and [h["step"] for h in seen if "loss" in h] == [1, 2]
    launch = (tmp_path / "z3" / "accelerate.yaml").read_text()
    assert "zero_stage: 3" in launch and "num_processes: 2" in launch
    [[prompt]] = Optimizer(str(tmp_path / "z3" / "model")).optimize(
        ["waves"], sampling=Sampling(max_new_tokens=16))
    assert prompt.strip()


def test_optimize_cli_single_batch_and_iterations(tmp_path: Path, base: str) -> None:
    runner = CliRunner()
    work = ["--work-dir", str(tmp_path / "work"), "--model", base, "--max-new-tokens", "24"]
    single = runner.invoke(app, ["optimize", "a cute dog on the grass", *work,
                                 "--iterations", "2"])
    assert single.exit_code == 0, single.output
    lines = [line for line in single.stdout.splitlines() if line.startswith("[")]
    assert [line[:3] for line in lines] == ["[1]", "[2]"]

    queries = tmp_path / "queries.txt"
    queries.write_text("a cat on a roof\ncity at night\n")
    out = tmp_path / "out.parquet"
    sampled = ["--temperature", "0.9", "--top-p", "0.9", "--seed", "7"]
    batch = runner.invoke(app, ["optimize", *work, "--input", str(queries), "--output",
                                str(out), "--iterations", "2", *sampled])
    assert batch.exit_code == 0, batch.output
    table = read_table(out, "optimized")
    assert table.height == 4 and sorted(set(table["iteration"])) == [1, 2]
    assert set(table["query"]) == {"a cat on a roof", "city at night"}
    assert table["temperature"].to_list() == [0.9] * 4 and set(table["seed"]) == {7}

    again = runner.invoke(app, ["optimize", *work, "--input", str(queries), "--output",
                                str(tmp_path / "again.parquet"), "--iterations", "2",
                                *sampled])
    assert again.exit_code == 0
    assert read_table(tmp_path / "again.parquet")["prompt"].to_list() == \
        table["prompt"].to_list()                                   # seeded: same prompts

    bad = runner.invoke(app, ["optimize", *work, "--input", str(queries)])
    assert bad.exit_code == 2 and "--output" in bad.output
