"""Presets, validation errors that name the file and field, extends and overrides."""

from pathlib import Path

import pytest

from vpo_core.config import DEFAULT_CONFIG, PipelineConfig, load_config, presets
from vpo_core.errors import ConfigError


def test_presets() -> None:
    assert {"cpu-tiny", "paper"} <= set(presets())
    tiny = load_config("cpu-tiny")
    assert tiny.preset == "cpu-tiny" and tiny.curate.input == "bundled"
    assert tiny.judge.model == "local/smollm2-135m-instruct"
    assert tiny.model_dump(exclude={"preset"}) == DEFAULT_CONFIG.model_dump(exclude={"preset"})


def test_paper_preset_has_the_papers_settings() -> None:
    paper = load_config("paper")
    assert (paper.curate.split.sft, paper.curate.split.dpo) == (10_000, 10_000)
    assert paper.curate.split.safety_share == pytest.approx(0.1)
    t = paper.train_sft
    assert (t.trl["learning_rate"], t.trl["num_train_epochs"], t.trl["warmup_steps"],
            t.global_batch_size) == (2e-6, 5, 0.1, 64)
    assert (t.trl["adam_beta1"], t.trl["adam_beta2"], t.zero_stage) == (0.9, 0.999, 3)
    d = paper.train_dpo
    assert (d.trl["beta"], d.trl["learning_rate"], d.global_batch_size,
            d.trl["num_train_epochs"]) == (0.1, 5e-7, 16, 1)
    assert (paper.sample.k, paper.sample.temperature, paper.sample.top_p) == (4, 0.9, 0.9)
    assert paper.judge.model == "gpt-4o" and paper.judge.api_key_env == "OPENAI_API_KEY"
    assert paper.policy.model == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert paper.render.num_frames == 49 and paper.pairs.margin == 0.5


def test_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("curate:\n  split:\n    sft: many\n  filter:\n    x: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value)
    assert str(bad) in text and "curate.split.sft" in text and "curate.filter" in text
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_extends_and_overrides(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: paper\ncurate:\n  split:\n    eval: 42\n")
    cfg = load_config(mine, {"curate.split.sft": 7, "seed": 3})
    assert (cfg.curate.split.eval, cfg.curate.split.sft, cfg.seed) == (42, 7, 3)
    assert cfg.train_sft.trl["learning_rate"] == 2e-6      # the rest comes from paper


def test_json_schema_for_the_ui() -> None:
    schema = PipelineConfig.model_json_schema()
    assert {"curate", "sft_data", "train_sft", "sample", "text_feedback", "render", "score",
            "pairs", "train_dpo", "evaluate"} <= set(schema["properties"])


def test_every_field_is_described_and_explained() -> None:
    from typer.testing import CliRunner

    from flows.cli import app
    from vpo_core.config import explain

    rows = explain(load_config("paper"))
    assert [r["field"] for r in rows if not r["description"].strip()] == []
    by_field = {r["field"]: r for r in rows}
    assert by_field["train_sft.global_batch_size"]["value"] == 64
    assert by_field["train_sft.global_batch_size"]["default"] == 8
    shown = CliRunner().invoke(app, ["config", "show", "--config", "paper", "--explain"])
    assert shown.exit_code == 0
    assert "* train_sft.global_batch_size = 64  (default 8)" in shown.output
    assert "Examples per optimizer step" in shown.output
