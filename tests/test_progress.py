"""Progress lines of long loops: throttled, with counts, on the logger Prefect routes to
the terminal and the run log."""

import logging

import pytest

from vpo_core.progress import Progress
from vpo_core.workdir import WorkDir, prefect_env


def test_progress_lines_are_throttled_and_count(caplog, monkeypatch) -> None:
    clock = iter([0.0, 1.0, 12.0, 13.0, 30.0])
    monkeypatch.setattr("vpo_core.progress.time.monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="vpo_core.progress")
    progress = Progress("judge calls", 3)               # starts at t=0
    for _ in range(3):                       # t=1 quiet, t=12 ten seconds on, t=13 the end
        progress.step()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "judge calls: 2/3 done", "judge calls: 3/3 done"]


def test_a_long_loop_reports_its_end_and_a_short_one_stays_quiet(caplog, monkeypatch) -> None:
    clock = iter([0.0, 11.0, 0.0, 1.0])
    monkeypatch.setattr("vpo_core.progress.time.monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="vpo_core.progress")
    Progress("long", 1).step()
    Progress("short", 1).step()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["long: 1/1 done"]


def test_cli_and_workers_route_vpo_core_logs_through_prefect(tmp_path) -> None:
    env = prefect_env(WorkDir.at(tmp_path), {})
    assert env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "vpo_core"


@pytest.mark.usefixtures("prefect_server")
def test_progress_lines_reach_the_flow_run_log() -> None:
    """What the UI shows under the run's logs, not only the terminal."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    import tasks  # noqa: F401  (sets the vpo_core level, as every flow module does)

    @flow(name="progress-demo")
    def demo() -> None:
        progress = Progress("demo calls", 2, every_s=0.0)
        progress.step()
        progress.step()

    state = demo(return_state=True)
    APILogHandler().flush()                    # logs go to the API in background batches
    run_filter = LogFilter(flow_run_id=LogFilterFlowRunId(
        any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=run_filter)
    lines = [log.message.split(" (")[0] for log in logs if log.name == "vpo_core.progress"]
    assert lines == ["demo calls: 1/2 done", "demo calls: 2/2 done"]


def test_stage_lines_give_memory_and_an_eta_at_the_pace_so_far(caplog, monkeypatch) -> None:
    from vpo_core.progress import StageClock, expected_seconds

    clock = iter([0.0, 0.0, 20.0, 20.0, 50.0])
    monkeypatch.setattr("vpo_core.progress.time.monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="vpo_core.progress")
    stages = StageClock(["curate", "sample-iter1", "evaluate"],
                        {"curate": 10, "sample": 30, "evaluate": 60})
    stages.begin("curate")                      # t=0
    stages.end("curate")                        # t=20: twice as slow as expected
    stages.begin("sample-iter1")
    stages.end("sample-iter1")                  # t=50: 30 s, on time -> pace 50/40
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "stage 1/3 curate: started (0 s into the run)"
    assert lines[1].startswith("stage 1/3 curate: done in 20 s; memory ")
    assert lines[1].endswith("20 s into the run, ETA 180 s for 2 more")
    assert lines[3].endswith("50 s into the run, ETA 75 s for 1 more")
    assert " GB, stage peak " in lines[3]
    assert set(expected_seconds("cpu-tiny")) >= {"curate", "train-sft", "evaluate"}
