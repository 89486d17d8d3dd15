"""The curate flow on a real (ephemeral) Prefect server: cache hits across runs, content-
keyed recomputation, missing outputs, forcing, bad input, artifacts and retries."""

import json
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from flows.curate import curate_flow
from flows.sft_data import sft_data_flow
from tasks.caching import stage_task
from vpo_core.config import PipelineConfig
from vpo_core.curate.sources import bundled_queries
from vpo_core.errors import InputError, TransientError
from vpo_core.tables import file_sha256

pytestmark = pytest.mark.usefixtures("prefect_server")
STEPS = ("curate-ingest", "curate-clean", "curate-label-safety", "curate-split")


def _task_states(state) -> dict[str, list[str]]:
    """Task name -> state names, in start order, of one flow run."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    out: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.expected_start_time):
        out.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return out


@pytest.fixture
def config(tiny_config: PipelineConfig, tmp_path: Path) -> PipelineConfig:
    src = tmp_path / "queries.json"
    src.write_text(json.dumps(bundled_queries()[:300]))
    tiny_config.curate.input = str(src)
    return tiny_config


def _run(config: PipelineConfig, force: bool = False):
    state = curate_flow(config, force=force, return_state=True)
    return state, state.result(), _task_states(state)


def test_second_run_is_all_cache_hits(config: PipelineConfig) -> None:
    _, first, states = _run(config)
    assert all(states[s] == ["Completed"] for s in STEPS)
    assert first["queries"].rows + first["rejects"].rows == 300
    _, second, states = _run(config)
    assert all(states[s] == ["Cached"] for s in STEPS)
    assert second == first


def test_cache_keys_on_content_not_path(config: PipelineConfig, tmp_path: Path) -> None:
    _, first, _ = _run(config)
    src = Path(config.curate.input)
    moved = tmp_path / "renamed.json"
    moved.write_bytes(src.read_bytes())
    config.curate.input = str(moved)
    _, _, states = _run(config)                      # same content elsewhere: all cached
    assert all(states[s] == ["Cached"] for s in STEPS)
    moved.write_text(json.dumps(bundled_queries()[:250]))   # same path, new content
    _, changed, states = _run(config)
    assert all(states[s] == ["Completed"] for s in STEPS)
    assert changed["queries"].rows + changed["rejects"].rows == 250
    assert changed["queries"].sha256 != first["queries"].sha256


def test_config_change_recomputes_only_downstream(config: PipelineConfig) -> None:
    _run(config)
    config.curate.split.sft = 30
    _, _, states = _run(config)
    assert states["curate-clean"] == ["Cached"] and states["curate-split"] == ["Completed"]


def test_missing_output_is_recomputed(config: PipelineConfig) -> None:
    _, first, _ = _run(config)
    Path(first["queries"].path).unlink()
    Path(first["rejects"].path).unlink()
    _, second, states = _run(config)
    assert states["curate-split"] == ["Cached", "Completed"]   # hit, then recomputed
    assert states["curate-clean"] == ["Cached", "Completed"]
    assert states["curate-ingest"] == ["Cached"]
    assert file_sha256(second["queries"].path) == first["queries"].sha256  # same bytes


def test_force_recomputes(config: PipelineConfig) -> None:
    _run(config)
    _, _, states = _run(config, force=True)
    assert all(states[s] == ["Completed"] for s in STEPS)


def test_bad_input_fails_fast_and_writes_nothing(config: PipelineConfig,
                                                 tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("uuid,text\n1,a cat\n")
    config.curate.input = str(bad)
    state = curate_flow(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(InputError, match="missing the prompt column") as err:
        state.result()
    assert str(bad) in str(err.value)
    assert _task_states(state)["curate-ingest"] == ["Failed"]     # no retries of bad input
    assert not (Path(config.work_dir) / "data").exists()


def test_artifacts(config: PipelineConfig) -> None:
    _run(config)
    with get_client(sync_client=True) as client:
        arts = {key: client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])), limit=1)
            for key in ("curate-summary", "curate-samples")}
    assert "# Curate" in arts["curate-summary"][0].data
    assert "| sft |" in arts["curate-summary"][0].data
    rows = json.loads(arts["curate-samples"][0].data)
    assert {r["split"] for r in rows} == {"sft", "dpo", "eval"}


def test_forced_curate_gives_the_same_data_downstream(config: PipelineConfig, judge) -> None:
    config.judge = judge
    out = sft_data_flow(config, queries=curate_flow(config)["queries"])
    forced = curate_flow(config, force=True)
    again = sft_data_flow(config, queries=forced["queries"])
    assert forced["queries"].sha256 == curate_flow(config)["queries"].sha256
    assert out["sft_examples"].sha256 == again["sft_examples"].sha256


calls: dict[str, int] = {}


@stage_task(name="flaky")
def flaky(kind: str, out_dir: str) -> dict:
    calls[kind] = calls.get(kind, 0) + 1
    if kind == "transient" and calls[kind] == 1:
        raise TransientError("429 rate limited")
    if kind == "permanent":
        raise InputError("row 3 has no prompt", path="x.csv", row=3, field="prompt")
    return {"ok": calls[kind]}


@flow
def retry_flow(kind: str) -> dict:
    return flaky.with_options(retry_delay_seconds=0, cache_policy=None)(kind, out_dir="-")


def test_only_transient_errors_are_retried() -> None:
    assert retry_flow("transient") == {"ok": 2}
    state = retry_flow("permanent", return_state=True)
    assert state.is_failed() and calls["permanent"] == 1
    with pytest.raises(InputError, match=r"file x\.csv, row 3, field 'prompt'"):
        state.result()
