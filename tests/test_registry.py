"""The stage registry: every stage declared once, and what is derived from it (CLI,
placement fields, deployments, step registry, code versions, the stage-output index)."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.step import TASK_MODULES
from tasks.caching import STEPS
from vpo_core.codeversion import ROOT, code_version, step_roots
from vpo_core.config import PipelineConfig, PlacementConfig, SplitConfig
from vpo_core.stage_index import MissingInput, lookup, record, stage_inputs
from vpo_core.stages import STAGES, fingerprint, upstream
from vpo_core.tables import ref_for


def test_every_stage_has_its_command_placement_field_deployment_and_steps() -> None:
    commands = {c.name for c in app.registered_commands}
    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())
                   ["deployments"]}
    for module in TASK_MODULES:
        importlib.import_module(module)
    for stage in STAGES:
        assert stage.name in commands, stage.name
        assert (stage.key in PlacementConfig.model_fields) == (stage.placement is not None)
        assert deployments[stage.name]["entrypoint"] == stage.flow, stage.name
        path, _, name = stage.flow.partition(":")
        assert callable(getattr(importlib.import_module(
            path.removesuffix(".py").replace("/", ".")), name))
        assert any(step.startswith(f"{stage.name}-") for step in STEPS), stage.name
        for item in stage.inputs:
            assert item.output in {s.name: s for s in STAGES}[item.stage].outputs
        assert PlacementConfig.model_fields.get(stage.key) is None or \
            PlacementConfig.model_fields[stage.key].description


def _tree(tmp_path: Path) -> Path:
    """A copy of the project's code, to edit."""
    root = tmp_path / "tree"
    for part in ("vpo_core", "tasks", "flows", "configs"):
        shutil.copytree(ROOT / part, root / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def _versions(root: Path) -> dict[str, tuple[str, ...]]:
    """Each stage's steps' code versions, computed on the tree at ``root``."""
    for module in TASK_MODULES:
        importlib.import_module(module)
    out = {}
    for s in STAGES:
        steps = [t for name, t in STEPS.items() if name.startswith(f"{s.name}-")]
        out[s.name] = tuple(
            code_version((*step_roots(t.fn.__module__, t.fn.__name__, root),
                          *s.subprocess_modules), s.files, root, own=t.fn.__module__)
            for t in sorted(steps, key=lambda t: t.name))
    return out


def test_code_version_follows_the_import_graph(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = _versions(root)
    critique = root / "vpo_core" / "critique.py"
    source = critique.read_text()
    critique.write_text(source + "\n# a comment\n")             # comments do not count
    assert _versions(root) == before
    critique.write_text(source + "\nCHANGED = 1\n")              # code does
    after = _versions(root)
    changed = {s for s in before if before[s] != after[s]}
    assert {"sft-data", "text-feedback"} <= changed             # they import it
    assert not changed & {"curate", "render", "train-sft", "train-dpo"}

    critique.write_text(source)
    runner = root / "vpo_core" / "reward" / "visionreward_runner.py"  # a subprocess script
    runner.write_text(runner.read_text() + "\nX = 1\n")
    after = _versions(root)
    assert {s for s in before if before[s] != after[s]} == {"score", "evaluate"}

    demos = root / "vpo_core" / "data" / "demonstrations.json"  # a data file it names
    runner.write_text(runner.read_text().removesuffix("\nX = 1\n"))
    demos.write_text(demos.read_text() + " ")
    after = _versions(root)
    assert after["sft-data"] != before["sft-data"] and after["render"] == before["render"]


def test_docstrings_and_formatting_do_not_change_a_version(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = _versions(root)
    module = root / "vpo_core" / "critique.py"
    text = module.read_text()
    assert text.startswith('"""')
    body = text.split('"""', 2)[2]
    module.write_text('"""Another docstring."""\n\n\n' + body.replace("\n\n", "\n\n\n"))
    assert _versions(root) == before


def _config(tmp_path: Path) -> PipelineConfig:
    cfg = PipelineConfig(work_dir=tmp_path / "work")
    cfg.curate.split = SplitConfig(sft=4, dpo=2, eval=1)
    return cfg


def test_stage_index_finds_outputs_made_under_this_configuration(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    root = Path(cfg.work_dir).resolve()
    table = root / "data" / "videos.parquet"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"PAR1")
    ref = ref_for(table)
    record(root, cfg.model_dump(mode="json"), "render", {"videos": ref})
    assert stage_inputs(cfg, "score")["videos"] == ref
    assert stage_inputs(cfg, "score", videos="given")["videos"] == "given"

    other = cfg.model_copy(deep=True)
    other.curate.split = SplitConfig(sft=5, dpo=2, eval=1)     # an upstream setting
    assert fingerprint(other.model_dump(mode="json"), "score") != \
        fingerprint(cfg.model_dump(mode="json"), "score")
    assert lookup(root, other.model_dump(mode="json"), "render") is None
    try:
        stage_inputs(other, "score")
        raise AssertionError("no videos were made under this configuration")
    except MissingInput as exc:
        assert "`vpo render`" in str(exc) and "--with-upstream" in str(exc)

    other = cfg.model_copy(deep=True)
    other.pairs.margin = 0.9                                    # a downstream setting
    assert stage_inputs(other, "score")["videos"] == ref

    table.write_bytes(b"PAR2")                                  # changed since: not used
    assert lookup(root, cfg.model_dump(mode="json"), "render") is None
    assert upstream("pairs") == ["curate", "sft-data", "train-sft", "sample",
                                 "text-feedback", "render", "score"]


def test_a_stage_alone_without_inputs_stops_at_once(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["pairs", "--work-dir", str(tmp_path / "w")])
    assert out.exit_code == 2
    assert "needs `critiques`" in out.output and "`vpo text-feedback`" in out.output
    assert not (tmp_path / "w" / "prefect" / "prefect.db").exists()   # no flow started


def test_a_step_depends_on_what_it_uses_not_on_its_neighbours(tmp_path: Path) -> None:
    """curate's recheck step imports the LLM layer and the templates; its other steps do
    not, so editing the few-shot demonstrations leaves them cached."""
    root = _tree(tmp_path)
    for module in TASK_MODULES:
        importlib.import_module(module)

    def version(step: str) -> str:
        t = STEPS[step]
        return code_version(step_roots(t.fn.__module__, t.fn.__name__, root), (), root,
                            own=t.fn.__module__)

    before = {s: version(s) for s in ("curate-split", "curate-recheck-safety",
                                      "sft-data-shard")}
    demos = root / "vpo_core" / "data" / "demonstrations.json"
    demos.write_text(demos.read_text() + " ")
    after = {s: version(s) for s in before}
    assert after["curate-split"] == before["curate-split"]
    assert after["sft-data-shard"] != before["sft-data-shard"]
    assert after["curate-recheck-safety"] != before["curate-recheck-safety"]
