"""`vpo export`: data folders that `datasets.load_dataset` loads as is, with a dataset card
the Hub's card classes parse (licence, attribution, configurations, row counts, source
configuration, version); model folders that `AutoModelForCausalLM` loads, with a model card
(licence, base model, the exact instruction, usage, training, the evaluation table and its
model-index). Safe by default: a push is private unless asked and lists only the files the
export wrote; no exported file (card, vpo_config.json, Parquet, model JSON) names an
endpoint, host or local path; model cards carry `datasets:` and the base model's licence
beside the data's (a Llama base makes it `other`, naming both). Pushing needs the network:
offline it fails clearly and keeps the folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml
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
    assert card.data.datasets == ["WenhaoWang/VidProM"]                 # no --dataset given
    assert card.data.to_dict()["base_model_license"] == "apache-2.0"    # SmolLM2's, beside
    assert "licensed `apache-2.0`" in card.text and "CC BY-NC 4.0" in card.text
    _assert_no_leak(out, str(tmp_path))     # the training card's data and base model paths
    assert "| method | round | aligned |" in card.text             # Table 2
    assert "This model is the method `sft`" in card.text
    assert "f" * 64 in card.text and "Not evaluated yet" not in card.text   # training kept
    assert not (out / "training_args.bin").exists()


# --------------------------------------------------------------------------- safe by default
LEAKS = ("10.1.2.3", "judge.internal", "cache.internal", "/srv/vpo-private", "/home/alice")


def _texts(folder: Path) -> dict[str, str]:
    """Every exported file as text (Parquet files as their rows, decoded)."""
    import pyarrow.parquet as pq

    return {p.relative_to(folder).as_posix(): json.dumps(pq.read_table(p).to_pylist())
            if p.suffix == ".parquet" else p.read_text(encoding="utf-8")
            for p in folder.rglob("*") if p.is_file() and p.suffix != ".safetensors"}


def _assert_no_leak(folder: Path, *more: str) -> None:
    for name, text in _texts(folder).items():
        for leak in (*LEAKS, *more):
            assert leak not in text, f"{leak!r} in {name}"


def test_an_export_names_no_endpoint_host_or_local_path(work: Path, tmp_path: Path) -> None:
    from huggingface_hub import DatasetCard

    failed = _sft_examples().with_columns(
        error=pl.lit("APIConnectionError: http://10.1.2.3:8000/v1 refused; log in "
                     "/srv/vpo-private/logs/judge.log"), status=pl.lit("llm_error"))
    write_table(failed, work / "data/sft-data/merge-2/sft_examples.parquet", "sft_examples")
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({
        "extends": "cpu-tiny", "work_dir": "/srv/vpo-private/work", "seed": 7,
        "judge": {"model": "openai/judge", "api_base": "http://judge.internal:8000/v1",
                  "api_key_env": "JUDGE_KEY", "call_store": "redis://cache.internal:6379/0"},
        "curate": {"input": "/home/alice/vidprom.csv"},
        "placement": {"render": "gpu"}}))
    out = tmp_path / "out"
    done = CliRunner().invoke(app, ["export", str(work), "--to", str(out), "--config",
                                    str(config)])
    assert done.exit_code == 0, done.output
    _assert_no_leak(out, str(tmp_path))

    kept = json.loads((out / "vpo_config.json").read_text())
    assert kept["seed"] == 7 and kept["judge"]["model"] == "openai/judge"   # what decides
    assert kept["curate"]["input"] == "vidprom.csv"                        # a file's name
    assert {"work_dir", "placement", "judge.api_base", "judge.api_key_env",
            "judge.call_store"} <= set(kept["vpo_export_left_out"])
    assert "work_dir" not in kept and "api_base" not in kept["judge"]
    errors = set(pl.read_parquet(next(out.glob("data/sft_examples/*.parquet")))["error"])
    assert errors == {"APIConnectionError: <endpoint> refused; log in judge.log"}
    assert "vpo_export_left_out" in DatasetCard.load(out / "README.md").text


def test_a_push_is_private_and_uploads_only_what_the_export_wrote(work: Path,
                                                                  tmp_path: Path) -> None:
    from vpo_core.export import export_dataset, upload_plan

    out = tmp_path / "out"
    (out / "data" / "old").mkdir(parents=True)
    (out / ".env").write_text("HF_TOKEN=hf_canary\n")        # the user's own files there
    (out / "data" / "old" / "stale.parquet").write_bytes(b"x")
    (out / "notes.md").write_text("private notes")
    written = export_dataset(work, out, {"preset": "cpu-tiny", "seed": 1})
    plan = upload_plan(written, "someone/vpo-data")
    assert plan.private and plan.repo_type == "dataset" and plan.repo_id == "someone/vpo-data"
    assert sorted(plan.files) == [
        "README.md", "data/dpo_pairs/train-00000-of-00001.parquet",
        "data/eval_judgements/test-00000-of-00001.parquet",
        "data/sft_examples/train-00000-of-00001.parquet", "vpo_config.json"]
    assert all((out / f).is_file() for f in plan.files)
    assert not upload_plan(written, "someone/vpo-data", public=True).private


def test_a_llama_based_model_card_names_both_licences_and_its_data(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    from vpo_core.training.report import model_card

    src = tmp_path / "dpo-model"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({
        "model_type": "llama", "_name_or_path": "/home/alice/models/sft"}))
    (src / "tokenizer_config.json").write_text(json.dumps({
        "name_or_path": "/home/alice/models/sft", "chat_template": "{{ messages }}"}))
    model_card("meta-llama/Meta-Llama-3-8B-Instruct", "dpo",
               "Trained with trl (DPO) from `/home/alice/models/sft`.\n\n- Data: "
               "`/srv/vpo-private/data/pairs/build-1/dpo_pairs.parquet`").save(src / "README.md")
    out = tmp_path / "hub-model"
    done = CliRunner().invoke(app, ["export", str(src), "--to", str(out), "--dataset",
                                    "someone/vpo-data"])
    assert done.exit_code == 0, done.output
    _assert_no_leak(out, str(tmp_path))
    card = ModelCard.load(out / "README.md")
    assert card.data.datasets == ["WenhaoWang/VidProM", "someone/vpo-data"]
    assert card.data.base_model == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert (card.data.license, card.data.license_name) == ("other", "llama3-and-cc-by-nc-4.0")
    assert card.data.license_link == "https://llama.meta.com/llama3/license/"
    assert card.data.to_dict()["base_model_license"] == "llama3"
    assert "CC BY-NC 4.0" in card.text and "licensed `llama3`" in card.text
    assert "`dpo_pairs.parquet`" in card.text                    # the file, not its path
    assert "_name_or_path" not in (out / "config.json").read_text()
