"""Test settings: offline, Prefect's home in a temp folder, one Prefect harness per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports Prefect, litellm or huggingface_hub.
_HOME = Path(tempfile.mkdtemp(prefix="vpo-tests-"))
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "HF_HOME": str(_HOME / "hf"),
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "PREFECT_HOME": str(_HOME / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(_HOME / "results"),
    "PREFECT_LOGGING_EXTRA_LOGGERS": "vpo_core",  # as the CLI and workers set it
})
(_HOME / "prefect").mkdir(parents=True, exist_ok=True)

import pytest  # noqa: E402

from vpo_core.config import PipelineConfig, SplitConfig  # noqa: E402
from vpo_core.workdir import WorkDir  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """One real Prefect API server (SQLite) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def work(tmp_path: Path) -> WorkDir:
    return WorkDir.at(tmp_path / "work").create()


@pytest.fixture
def tiny_config(work: WorkDir) -> PipelineConfig:
    """The embedded default with small splits, in the test's own work directory, without
    the judge's safety re-check (tests that need a judge use the ``judge`` fixture)."""
    cfg = PipelineConfig(work_dir=work.root)
    cfg.curate.split = SplitConfig(sft=20, dpo=10, eval=5)
    cfg.curate.safety.llm_recheck = False
    return cfg


@pytest.fixture
def fake_llm():
    """A real OpenAI-compatible server on 127.0.0.1 (see vpo_core.testing.openai_server)."""
    from vpo_core.testing.openai_server import FakeOpenAI, ServerThread

    with ServerThread(FakeOpenAI(retry_after=0.01, hang_seconds=3)) as server:
        yield server


@pytest.fixture
def judge(fake_llm):
    """Judge settings pointing at the fake server, with fast retries."""
    from vpo_core.config import LLMConfig

    return LLMConfig(model="openai/fake-judge", api_base=fake_llm.api_base, timeout_s=1.0,
                     retry_base_s=0.01, max_retries=6, parse_mode="strict")


@pytest.fixture(scope="session")
def bundled_models(tmp_path_factory) -> Path:
    """The bundled SmolLM2 converted once per session (~25 s), shared by the tests."""
    from vpo_core.models.bundled import bundled_model_dir

    root = tmp_path_factory.mktemp("models")
    bundled_model_dir(root)
    return root


@pytest.fixture(scope="module")
def module_judge():
    """Judge settings on a fake server shared by a module's tests (pipeline subprocesses)."""
    from vpo_core.config import LLMConfig
    from vpo_core.testing.openai_server import FakeOpenAI, ServerThread

    with ServerThread(FakeOpenAI()) as server:
        yield LLMConfig(model="openai/fake-judge", api_base=server.api_base, timeout_s=10.0,
                        retry_base_s=0.01, max_retries=6, parse_mode="strict")
