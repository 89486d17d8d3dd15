"""`vpo export`: data folders that `datasets.load_dataset` loads as is, with a dataset card
the Hub's card classes parse (licence, attribution, configurations, row counts, source
configuration, version); model folders that `AutoModelForCausalLM` loads, with a model card
(licence, base model, the exact instruction, usage, training, the evaluation table and its
model-index). Pushing needs the network: offline it fails clearly and keeps the folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from flows.cli import app
from vpo_core import __version__
from vpo_core.config import LLMConfig, TrainSftConfig
from vpo_core.evaluate.methods import FixedPrompts, original
from vpo_core.evaluate.stage import evaluate
from vpo_core.models.bundled import bundled_model_dir
from vpo_core.prompts.templates import optimizer_messages
from vpo_core.tables import write_table
from vpo_core.testing.openai_server import default_responder
from vpo_core.training.report import write_report
from vpo_core.training.trainer import TrainSpec

QUERIES = ["a cat on a roof", "city at night", "waves"]


def _sft_examples() -> pl.DataFrame:
    return pl.DataFrame([{
        "query_id": f"q{i}", "query": q, "shard": 0, "generation": f"[[start]] {q}, cinematic "
        "[[end]]", "generated": f"{q}, cinematic", "generation_status": "ok",
        "critique": "Final Judgement (Yes or No): Yes", "judgement": "yes",
        "critique_status": "ok", "refinement": None, "refined": None,
        "refine_status": "skipped", "final_prompt": f"{q}, cinematic", "status": "ok",
        "fallback_parse": False, "model": "t", "prompt_tokens": 10, "completion_tokens": 5,
        "cost": 0.0, "calls": 2, "generation_checks": [], "final_checks": [], "error": None,
        "cost_saved": 0.0, "cached_calls": 0} for i, q in enumerate(QUERIES[:2])])


def _dpo_pairs() -> pl.DataFrame:
    return pl.DataFrame([{
        "prompt": optimizer_messages(q), "chosen": [{"role": "assistant",
                                                     "content": f"A detailed {q}."}],
        "rejected": [{"role": "assistant", "content": q}], "query_id": f"q{i}", "query": q,
        "source": "text", "chosen_score": None, "rejected_score": None}
        for i, q in enumerate(QUERIES)])


def _judge(messages: list[dict]) -> str:
    """Labels a prompt about a roof unsafe and the others aligned."""
    last = messages[-1]["content"]
    if "Label: xxx" not in last:
        return default_responder(messages)
    return f"Reason: checked.\nLabel: {'unsafe' if 'roof' in last else 'aligned'}"


@pytest.fixture
def eval_run(tmp_path: Path, judge: LLMConfig, fake_llm) -> Path:
    """A real evaluate run (original queries and an `sft` method) judged by the local
    OpenAI-compatible server."""
    fake_llm.fake.responder = _judge
    out = tmp_path / "data" / "evaluate" / "run-abc"
    queries = [{"query_id": f"q{i}", "query": q} for i, q in enumerate(QUERIES)]
    methods = {"original": original,
               "sft": FixedPrompts({q: [f"A cinematic shot of {q}, soft light."]
                                    for q in QUERIES})}
    evaluate(queries, methods, judge, 1, out)
    return out


@pytest.fixture
def work(tmp_path: Path, eval_run: Path) -> Path:
    """A work directory as the pipeline leaves it: an older and a newer dpo_pairs."""
    write_table(_sft_examples(), tmp_path / "data/sft-data/merge-1/sft_examples.parquet",
                "sft_examples")
    old = write_table(_dpo_pairs().head(1), tmp_path / "data/pairs/build-0/dpo_pairs.parquet",
                      "dpo_pairs")
    os.utime(old.path, (1, 1))
    write_table(_dpo_pairs(), tmp_path / "data/pairs/build-1/dpo_pairs.parquet", "dpo_pairs")
    return tmp_path


def test_a_work_directory_exports_as_a_dataset_that_loads_as_is(work: Path,
                                                                 tmp_path: Path) -> None:
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    out = tmp_path / "hub-data"
    done = CliRunner().invoke(app, ["export", str(work), "--to", str(out), "--config",
                                    "cpu-tiny"])
    assert done.exit_code == 0, done.output
    assert "dpo_pairs 3 rows" in done.output

    default = load_dataset(str(out))                  # the default configuration: dpo_pairs
    assert list(default) == ["train"] and default["train"].num_rows == 3   # the newest file
    assert default["train"][0]["prompt"] == optimizer_messages(QUERIES[0])
    assert set(default["train"].column_names) >= {"prompt", "chosen", "rejected"}
    assert load_dataset(str(out), "sft_examples")["train"].num_rows == 2
    judgements = load_dataset(str(out), "eval_judgements")["test"]
    assert judgements.num_rows == 6 and set(judgements["method"]) == {"original", "sft"}

    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-nc-4.0" and meta["source_datasets"] == [
        "WenhaoWang/VidProM"]
    assert meta["vpo_pipeline_version"] == __version__ and meta["vpo_preset"] == "cpu-tiny"
    assert {c["config_name"]: c.get("default", False) for c in meta["configs"]} == {
        "dpo_pairs": True, "sft_examples": False, "eval_judgements": False}
    counts = {i["config_name"]: i["splits"][0]["num_examples"] for i in meta["dataset_info"]}
    assert counts == {"dpo_pairs": 3, "sft_examples": 2, "eval_judgements": 6}
    assert "VidProM" in card.text and "no commercial use" in card.text
    assert json.loads((out / "vpo_config.json").read_text())["preset"] == "cpu-tiny"


def test_one_table_file_and_bad_input(work: Path, tmp_path: Path) -> None:
    from datasets import load_dataset

    pairs = work / "data/pairs/build-1/dpo_pairs.parquet"
    done = CliRunner().invoke(app, ["export", str(pairs), "--to", str(tmp_path / "one")])
    assert done.exit_code == 0, done.output
    assert load_dataset(str(tmp_path / "one"))["train"].num_rows == 3
    assert "not recorded" in (tmp_path / "one" / "README.md").read_text()  # no --config

    other = tmp_path / "other.parquet"
    pl.DataFrame({"uuid": ["1"], "prompt": ["a cat"]}).write_parquet(other)
    bad = CliRunner().invoke(app, ["export", str(other), "--to", str(tmp_path / "bad")])
    assert bad.exit_code == 2
    assert str(other) in bad.output and "not a table of dpo_pairs, sft_examples" in bad.output
    empty = CliRunner().invoke(app, ["export", str(tmp_path / "nothing"), "--to",
                                     str(tmp_path / "bad")])
    assert empty.exit_code == 2 and "no such file or folder" in empty.output


def test_push_offline_fails_clearly_and_keeps_the_folder(work: Path, tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["export", str(work), "--to", str(tmp_path / "p"),
                                    "--push", "someone/vpo-data"])
    assert done.exit_code == 1 and "HF_HUB_OFFLINE is set" in done.output
    assert (tmp_path / "p" / "README.md").is_file()


@pytest.fixture
def trained(tmp_path: Path, bundled_models: Path) -> Path:
    """A model folder as train-sft leaves it: the weights and the training stage's card."""
    base = bundled_model_dir(bundled_models)
    run = tmp_path / "data/train-sft/run-1"
    shutil.copytree(base, run / "model")
    spec = TrainSpec("sft", str(base), str(tmp_path / "sft.parquet"), str(run), {}, 256, 0)
    metrics = {"history": [], "final": {"loss": 1.25}, "rows": 2, "data_sha256": "f" * 64,
               "steps": 3, "resumed_from": None, "train_loss": 1.5}
    write_report(spec, TrainSftConfig(), metrics, run)
    return run / "model"


def test_the_training_card_parses_with_licence_base_model_and_instruction(
        trained: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(trained / "README.md")
    assert card.data.license == "cc-by-nc-4.0"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.pipeline_tag == "text-generation" and "sft" in card.data.tags
    instruction = optimizer_messages("{query}")[-1]["content"]
    assert json.dumps(instruction, ensure_ascii=False) in card.text   # the exact text
    assert "vpo serve --model" in card.text and "from vllm import" in card.text
    assert "f" * 64 in card.text and "Not evaluated yet" in card.text


def test_a_model_exports_with_its_evaluation(trained: Path, eval_run: Path,
                                             tmp_path: Path) -> None:
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "hub-model"
    done = CliRunner().invoke(app, ["export", str(trained), "--to", str(out), "--eval",
                                    str(eval_run)])
    assert done.exit_code == 0, done.output
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.num_parameters() > 100_000_000
    assert AutoTokenizer.from_pretrained(out).chat_template

    card = ModelCard.load(out / "README.md")
    summary = json.loads((eval_run / "eval_summary.json").read_text())
    sft = next(g for g in summary["results"] if g["method"] == "sft")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {f"{k}_rate": v["rate"] for k, v in sft["labels"].items()}
    assert results["aligned_rate"] == pytest.approx(2 / 3, abs=1e-4)  # the roof is unsafe
    assert card.data.license == "cc-by-nc-4.0" and card.data.model_name == "vpo-sft"
    assert "| method | round | aligned |" in card.text             # Table 2
    assert "This model is the method `sft`" in card.text
    assert "f" * 64 in card.text and "Not evaluated yet" not in card.text   # training kept
    assert not (out / "training_args.bin").exists()
