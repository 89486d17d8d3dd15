"""The render stage's library: the tiny CogVideoX really runs (no mocks of diffusers)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vpo_core.config import RenderConfig
from vpo_core.render.pipelines import check_video_size, load_pipeline, tiny_cogvideox
from vpo_core.render.renderer import render_rows, video_seed
from vpo_core.render.video import read_frames, write_mp4
from vpo_core.tables import read_table, write_table

CFG = RenderConfig()  # the embedded default: tiny-cogvideox, 9 frames of 64x64, 4 steps
SHAPE = (CFG.num_frames, CFG.height, CFG.width, 3)


def _rows(*keys: tuple[str, int], prompt: str = "a red fox running through snow") -> list[dict]:
    return [{"query_id": q, "query": f"fox {q}", "sample_index": i, "prompt": f"{prompt} #{i}"}
            for q, i in keys]


class CountingPipeline:
    """A real pipeline that counts its calls and raises chosen errors for chosen prompts."""

    def __init__(self, pipe: Any, fail: dict[str, Exception] | None = None) -> None:
        self.pipe, self.fail, self.prompts = pipe, fail or {}, []

    def __call__(self, prompt: str, **kwargs: Any) -> Any:
        self.prompts.append(prompt)
        if prompt in self.fail:
            raise self.fail[prompt]
        return self.pipe(prompt=prompt, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)


@pytest.fixture(scope="module")
def pipe() -> Any:
    return load_pipeline(CFG, device="cpu")


@pytest.fixture(scope="module")
def rendered(pipe: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """Two samples of one query, rendered once for the tests of this module."""
    out = tmp_path_factory.mktemp("videos")
    return out, render_rows(_rows(("q1", 0), ("q1", 1)), CFG, out, seed=0, pipe=pipe)


def test_renders_an_mp4_of_the_configured_shape_and_a_contact_sheet(
        rendered: tuple[Path, Any], tmp_path: Path) -> None:
    out, df = rendered
    assert df["status"].to_list() == ["ok", "ok"]
    assert df["error"].to_list() == [None, None]
    for row in df.iter_rows(named=True):
        assert row["video_path"] == str(out / f"q1-{row['sample_index']}.mp4")
        assert read_frames(row["video_path"]).shape == SHAPE
        assert Image.open(row["contact_sheet"]).size == (4 * CFG.width, CFG.height)
        assert row["seed"] == video_seed(0, "q1", row["sample_index"])
        assert (row["num_frames"], row["height"], row["width"]) == SHAPE[:3]
        assert row["pipeline"] == "tiny-cogvideox" and row["seconds"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["q1-0.mp4", "q1-0.png", "q1-1.mp4",
                                                     "q1-1.png"]  # no temp files left
    ref = write_table(df, tmp_path / "videos.parquet", "videos")
    assert ref.rows == 2 and read_table(ref).equals(df)


def test_same_seed_renders_the_same_video_and_another_sample_differs(
        rendered: tuple[Path, Any], tmp_path: Path) -> None:
    out, _ = rendered
    fresh = load_pipeline(CFG, device="cpu")  # as a resumed run in a new process would
    again = render_rows(_rows(("q1", 0)), CFG, tmp_path, seed=0, pipe=fresh)
    first = read_frames(out / "q1-0.mp4")
    np.testing.assert_array_equal(read_frames(again["video_path"][0]), first)
    other = read_frames(out / "q1-1.mp4")
    assert np.abs(other.astype(int) - first.astype(int)).mean() > 1


def test_video_seed_depends_only_on_seed_query_and_sample() -> None:
    assert video_seed(0, "q1", 0) == 6208036371450588062  # the same in every process
    seeds = {video_seed(s, q, i) for s in (0, 1) for q in ("q1", "q2") for i in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)


def test_resume_reuses_finished_videos_and_rerenders_broken_ones(
        pipe: Any, rendered: tuple[Path, Any], tmp_path: Path) -> None:
    out = shutil.copytree(rendered[0], tmp_path / "videos")
    finished = out / "q1-0.mp4"
    mtime = finished.stat().st_mtime_ns
    original = read_frames(out / "q1-1.mp4")
    (out / "q1-1.mp4").write_bytes(b"half a video")  # e.g. copied in by hand, truncated
    (out / "q1-0.png").unlink()

    counting = CountingPipeline(pipe)
    df = render_rows(_rows(("q1", 0), ("q1", 1)), CFG, out, seed=0, pipe=counting)

    assert df["status"].to_list() == ["ok", "ok"]
    assert counting.prompts == ["a red fox running through snow #1"]  # only the broken one
    assert finished.stat().st_mtime_ns == mtime
    assert (out / "q1-0.png").is_file()  # the missing contact sheet is redrawn
    np.testing.assert_array_equal(read_frames(out / "q1-1.mp4"), original)


def test_a_finished_shard_loads_no_model(rendered: tuple[Path, Any]) -> None:
    cfg = CFG.model_copy(update={"pipeline": "/no/such/model"})
    df = render_rows(_rows(("q1", 0), ("q1", 1)), cfg, rendered[0], seed=0)
    assert df["status"].to_list() == ["ok", "ok"]


def test_failed_videos_are_recorded_and_the_others_go_on(pipe: Any, tmp_path: Path) -> None:
    rows = [*_rows(("ok", 0)), *_rows(("oom", 0), prompt="huge"),
            *_rows(("oom", 1), prompt="huge"), *_rows(("bad", 0), prompt="bad")]
    counting = CountingPipeline(pipe, fail={
        "huge #0": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
        "huge #1": RuntimeError("CUDA error: out of memory"),
        "bad #0": KeyError("text_encoder"),
    })
    progress: list[tuple[int, int]] = []
    df = render_rows(rows, CFG, tmp_path, seed=0, pipe=counting,
                     on_progress=lambda done, total: progress.append((done, total)))

    assert df["status"].to_list() == ["ok", "error:oom", "error:oom", "error:KeyError"]
    assert df["error"].to_list()[1:] == ["CUDA out of memory. Tried to allocate 2 GiB",
                                         "CUDA error: out of memory", "'text_encoder'"]
    assert df["video_path"].to_list()[1:] == [None, None, None]
    assert read_frames(df["video_path"][0]).shape == SHAPE
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["ok-0.mp4"]
    assert progress == [(i, 4) for i in range(5)]
    assert write_table(df, tmp_path / "videos.parquet", "videos").rows == 4


@pytest.mark.parametrize(("field", "value", "message"), [
    ("num_frames", 8, r"render\.num_frames = 8 .* 8 \* k \+ 1; nearest valid values: 1 or 9"),
    ("num_frames", 13, r"render\.num_frames = 13 .*: 9 or 17"),
    ("height", 72, r"render\.height = 72 .* multiple of 16; nearest valid values: 64 or 80"),
    ("width", 40, r"render\.width = 40 .*: 32 or 48"),
])
def test_a_size_the_pipeline_cannot_render_is_a_clear_error(
        pipe: Any, tmp_path: Path, field: str, value: int, message: str) -> None:
    cfg = RenderConfig(**{field: value})
    with pytest.raises(ValueError, match=message):
        load_pipeline(cfg, device="cpu")
    with pytest.raises(ValueError, match=message):
        render_rows(_rows(("q1", 0)), cfg, tmp_path, seed=0, pipe=pipe)
    assert list(tmp_path.iterdir()) == []


def test_the_papers_size_is_valid_for_cogvideox(pipe: Any) -> None:
    check_video_size(pipe, RenderConfig(num_frames=49, height=480, width=720))


def test_tiny_weights_are_the_same_every_time_and_leave_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    first, second = tiny_cogvideox(CFG), tiny_cogvideox(CFG)
    assert torch.equal(torch.get_rng_state(), state)
    for name in ("text_encoder", "transformer", "vae"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_mp4_round_trip_keeps_size_and_frames(tmp_path: Path) -> None:
    frames = np.linspace(0, 1, 5 * 48 * 80 * 3, dtype=np.float32).reshape(5, 48, 80, 3)
    path = write_mp4(frames, tmp_path / "v.mp4", fps=8)
    back = read_frames(path)
    assert back.shape == (5, 48, 80, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - np.round(frames * 255)).mean() < 2
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
