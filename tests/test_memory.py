"""Memory between stages: the allocator settings the vpo command gives itself, and what a
stage loaded is gone when it ends (the judge's model, a trainer's models)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import polars as pl
import pytest

from vpo_core.memory import MALLOC_ENV, MARKER, peak_rss, reset_peak, rss

ROOT = Path(__file__).resolve().parents[1]
# Prints "start" before the re-exec (so twice when it re-executes), then the variables.
SCRIPT = ("import json, os; print('start', flush=True); "
          "from vpo_core.memory import reexec_with_allocator; reexec_with_allocator(); "
          f"print(json.dumps({{k: os.environ.get(k) for k in {[*MALLOC_ENV, MARKER]!r}}}))")


def _run(**env: str) -> tuple[int, dict[str, str | None]]:
    base = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV and k != MARKER}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**base, **env}, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return out.count("start"), json.loads(out[-1])


def test_the_command_re_executes_once_with_the_allocator_settings() -> None:
    starts, env = _run()
    assert starts == 2
    assert env == {**MALLOC_ENV, MARKER: "1"}


def test_a_users_own_value_wins_and_all_set_means_no_re_exec() -> None:
    starts, env = _run(MALLOC_ARENA_MAX="4")
    assert starts == 2
    assert env["MALLOC_ARENA_MAX"] == "4"
    assert env["MALLOC_TRIM_THRESHOLD_"] == MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]
    starts, env = _run(**{k: "1" for k in MALLOC_ENV})
    assert starts == 1 and env[MARKER] is None
    starts, _ = _run(**{MARKER: "1"})           # the marker alone stops a loop
    assert starts == 1


def test_peak_resets_to_the_current_resident_set() -> None:
    block = bytearray(64 << 20)               # 64 MiB, touched
    block[::4096] = b"x" * len(block[::4096])
    del block
    from vpo_core.memory import release

    release()
    reset_peak()
    assert peak_rss() <= rss() + (16 << 20)


def test_end_of_stage_unloads_the_in_process_judge(bundled_models: Path) -> None:
    import litellm

    from flows.chain import end_of_stage
    from vpo_core.llm.local import register_local_provider

    provider = register_local_provider(str(bundled_models))
    reply = litellm.completion(model="local/smollm2-135m-instruct", max_tokens=2,
                               messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content is not None
    loaded = weakref.ref(provider._model.model)
    end_of_stage()
    assert loaded() is None
    reply = litellm.completion(model="local/smollm2-135m-instruct", max_tokens=2,
                               messages=[{"role": "user", "content": "Hi"}])
    assert provider._model is not None        # the next stage's call loads it again


def _live_models() -> int:
    from transformers import PreTrainedModel

    gc.collect()
    return sum(isinstance(o, PreTrainedModel) for o in gc.get_objects())


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    from vpo_core.models.bundled import TINY_LLAMA, bundled_model_dir

    return str(bundled_model_dir(tmp_path_factory.mktemp("models"), TINY_LLAMA))


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_a_training_run_leaves_no_model_alive(tmp_path: Path, tiny_llama: str,
                                              kind: str) -> None:
    from vpo_core.config import TrainDpoConfig, TrainSftConfig
    from vpo_core.training.trainer import TrainSpec, train

    data = tmp_path / "data.parquet"
    if kind == "sft":
        pl.DataFrame({"query": ["a cat", "a dog"],
                      "final_prompt": ["A cat sleeps.", "A dog runs."]}).write_parquet(data)
    else:
        pl.DataFrame({"prompt": [[{"role": "user", "content": q}] for q in ("a cat", "a dog")],
                      "chosen": [[{"role": "assistant", "content": "A cat sleeps."}]] * 2,
                      "rejected": [[{"role": "assistant", "content": "No."}]] * 2}
                     ).write_parquet(data)
    cfg = (TrainSftConfig if kind == "sft" else TrainDpoConfig)(
        global_batch_size=2, trl={"per_device_train_batch_size": 2, "max_steps": 1,
                                  "warmup_steps": 0.0})
    before = _live_models()
    train(TrainSpec(kind, tiny_llama, str(data), str(tmp_path / "run"), cfg.model_dump(), 1024, 0))
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert _live_models() == before


def test_make_test_runs_the_suite_with_the_same_settings() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for key, value in MALLOC_ENV.items():
        assert f"{key}=$${{{key}:-{value}}}" in makefile


def test_the_judges_batch_shares_its_prefix_and_answers_as_alone(bundled_models: Path
                                                                 ) -> None:
    """The in-process judge computes the template the rows share once per batch; each
    row's greedy answer is the one it gets alone."""
    from vpo_core.llm.local import LocalChatModel
    from vpo_core.prompts.templates import generation_messages

    model = LocalChatModel(str(bundled_models))
    conversations = [generation_messages(q) for q in ("a cat on a roof", "waves", "a red car")]
    together = model.generate(conversations, 6, 0.0, None, 1.3, 3)
    alone = [model.generate([c], 6, 0.0, None, 1.3, 3)[0] for c in conversations]
    assert together == alone
    assert all(prompt > 500 and made == 6 for _, prompt, made in together)
