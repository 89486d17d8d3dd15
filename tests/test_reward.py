"""The score stage's library: the checklist and its two scores, answer parsing, frame
metrics on real MP4s, the vlm-checklist backend through a real local OpenAI-compatible
server, and the VisionReward subprocess plumbing."""

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import imageio
import numpy as np
import polars as pl
import pytest

from vpo_core.config import LLMConfig, ScoreConfig
from vpo_core.errors import ConfigError, InputError, StageFailed
from vpo_core.reward import checklist as cl
from vpo_core.reward import visionreward as vr
from vpo_core.reward.checklist import VideoToScore
from vpo_core.reward.frame_metrics import WEIGHTS, frame_metrics, score_video
from vpo_core.reward.frames import read_frames, sample_indices
from vpo_core.reward.scoring import score_rows
from vpo_core.tables import polars_schema, read_table, write_table
from vpo_core.testing.openai_server import message_text

# VPO's weights of questions 1 and 4 (1-based) and the sum of VisionReward's 29 weights,
# written out from thu-coai/VPO src/process_data.py to check the shipped JSON against.
W1, W4 = 0.9543901856422174, 1.141818673357406
SELECTED_SUM = 6.277172601007019


def _answers(*yes: int) -> list[bool]:
    """64 answers, yes exactly at the given 1-based question numbers."""
    return [i + 1 in yes for i in range(64)]


# --------------------------------------------------------------------------- checklist
def test_checklist_has_64_questions_and_29_weighted() -> None:
    qs = cl.checklist()
    assert len(qs) == 64 and len(cl.selected()) == 29
    assert all((q.vpo_weight > 0) == q.selected for q in qs)
    assert cl.vpo_weights()[0] == W1 and cl.vpo_weights()[3] == W4
    assert cl.vpo_weights().sum() == pytest.approx(SELECTED_SUM)
    assert cl.selected()[:3] == (0, 1, 3)


def test_vpo_score_by_hand() -> None:
    assert cl.vpo_score(_answers()) == 0.0
    assert cl.vpo_score(_answers(1)) == W1
    assert cl.vpo_score(_answers(1, 4)) == pytest.approx(W1 + W4)
    assert cl.vpo_score(_answers(3)) == 0.0                     # a zero-weight question
    assert cl.vpo_score([True] * 64) == pytest.approx(SELECTED_SUM)


def test_visionreward_score_by_hand() -> None:
    assert cl.visionreward_score([True] * 64) == pytest.approx(SELECTED_SUM / 29)
    assert cl.visionreward_score([False] * 64) == pytest.approx(-SELECTED_SUM / 29)
    assert cl.visionreward_score(_answers(1)) == pytest.approx((W1 - (SELECTED_SUM - W1)) / 29)
    # question 3 is not one of VisionReward's 29: flipping it changes nothing
    assert cl.visionreward_score(_answers(1, 3)) == cl.visionreward_score(_answers(1))


def test_questions_substitute_the_prompt_on_one_line() -> None:
    qs = cl.questions("a red fox\n10. yes   {query}")
    assert len(qs) == 64
    assert qs[0] == ('Does the video meet all the requirements stated in the text '
                     '"a red fox 10. yes {query}"?')
    assert all("\n" not in q and "[[prompt]]" not in q for q in qs)


def test_validation_names_the_field() -> None:
    with pytest.raises(InputError, match=r"field 'answers': expected 64 answers, got 63"):
        cl.vpo_score([True] * 63)
    with pytest.raises(InputError, match=r"question\(s\) 5$"):
        cl.visionreward_score([True] * 4 + [None] + [True] * 59)
    with pytest.raises(InputError, match="rejected answers"):
        cl.dominates([True] * 64, [True] * 65)
    with pytest.raises(InputError, match="not booleans"):
        cl.validate_answers(["yes"] * 64)


def test_dominance() -> None:
    base = _answers(1, 4)
    assert cl.dominates(_answers(1, 4, 10), base)              # one no -> yes
    assert not cl.dominates(base, base)                        # equal: nothing better
    assert not cl.dominates(_answers(1, 10), base)             # better on 10, worse on 4
    assert not cl.dominates(base, _answers(1, 4, 10))


def test_parse_numbered_answers() -> None:
    text = ("Here are my answers:\n1. yes\n**2.** No\nQ3: YES\n"
            "5) Does the composition have no obvious flaws? Yes\n"
            "[6] no\n7 yes\n65. yes\n8. maybe\n9. no\n9. yes\n")
    got = cl.parse_answers(text)
    assert len(got) == 64
    assert got[:9] == [True, False, True, None, True, False, True, None, True]
    assert got[9:] == [None] * 55
    assert cl.parse_answers("") == [None] * 64
    assert cl.parse_answers(None) == [None] * 64


def test_parse_visionreward_qa_format() -> None:
    qa = [{"id": i + 1, "q": q, "response": "yes" if i % 2 == 0 else "no"}
          for i, q in enumerate(cl.questions("a cat"))]
    expected = [i % 2 == 0 for i in range(64)]
    assert cl.parse_answers(json.dumps({"id": "v", "QA": qa})) == expected
    assert cl.parse_answers({"QA": qa}) == expected
    assert cl.parse_answers(json.dumps(qa)) == expected
    qa[5]["response"] = "<unk>"
    assert cl.parse_answers({"QA": qa})[5] is None


def test_read_answers_file(tmp_path: Path) -> None:
    qa = [{"id": i + 1, "q": "q", "response": "yes"} for i in range(64)]
    jsonl = tmp_path / "answers.jsonl"
    jsonl.write_text(json.dumps({"video_path": "a.mp4", "QA": qa}) + "\n\n"
                     + json.dumps({"video_path": "b.mp4", "answers": [False] * 64}) + "\n")
    assert cl.read_answers_file(jsonl) == {"a.mp4": [True] * 64, "b.mp4": [False] * 64}
    parquet = tmp_path / "answers.parquet"
    pl.DataFrame({"video_path": ["c.mp4"], "answers": [[True] * 64]}).write_parquet(parquet)
    assert cl.read_answers_file(parquet) == {"c.mp4": [True] * 64}
    jsonl.write_text(json.dumps({"video_path": "a.mp4", "QA": qa}) + "\n{oops\n")
    with pytest.raises(InputError, match=r"answers.jsonl, row 1: not JSON"):
        cl.read_answers_file(jsonl)
    jsonl.write_text(json.dumps({"path": "a.mp4"}) + "\n")
    with pytest.raises(InputError, match="field 'video_path'"):
        cl.read_answers_file(jsonl)


# --------------------------------------------------------------------------- videos
def _smooth(t: int = 10, size: int = 64, speed: float = 2.0) -> np.ndarray:
    """A colourful pattern sliding steadily to the right."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    frames = []
    for i in range(t):
        shift = speed * i
        img = np.stack([128 + 100 * np.sin((xx + shift) / 6.0),
                        128 + 80 * np.cos((yy + xx + shift) / 9.0),
                        128 + 60 * np.sin((yy - shift) / 7.0)], axis=-1)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _noise(t: int = 10, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, size, size, 3), dtype=np.uint8)


def _write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> str:
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=16) as writer:
        for frame in frames:
            writer.append_data(frame)
    return str(path)


def test_smooth_video_beats_noise_on_consistency_and_smoothness() -> None:
    smooth, noise = frame_metrics(_smooth()), frame_metrics(_noise())
    for key in ("temporal_consistency", "motion_smoothness"):
        assert smooth.metrics[key] > 0.6 > 0.1 > noise.metrics[key]
    assert smooth.score > noise.score
    assert 0 <= noise.score <= smooth.score <= 1


def test_black_video_is_badly_exposed() -> None:
    black = frame_metrics(np.zeros((6, 64, 64, 3), np.uint8))
    assert black.metrics["exposure"] == 0.0 and black.metrics["clipped_share"] == 1.0
    assert black.metrics["colourfulness"] == 0.0
    assert frame_metrics(_smooth()).metrics["exposure"] > 0.9


def test_blur_lowers_sharpness() -> None:
    sharp = _smooth()
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in sharp])
    assert frame_metrics(blurred).metrics["sharpness"] < frame_metrics(sharp).metrics["sharpness"]


def test_single_frame_renormalises_the_weights() -> None:
    one = frame_metrics(_smooth(t=1))
    assert one.metrics["temporal_consistency"] is None and one.metrics["motion_smoothness"] is None
    rest = ("sharpness", "exposure", "colourfulness")
    expected = sum(WEIGHTS[k] * one.metrics[k] for k in rest) / sum(WEIGHTS[k] for k in rest)
    assert one.score == pytest.approx(expected)
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


def test_real_mp4_files(tmp_path: Path) -> None:
    path = _write_mp4(tmp_path / "smooth.mp4", _smooth())
    frames = read_frames(path)
    assert frames.shape == (10, 64, 64, 3) and frames.dtype == np.uint8
    assert score_video(path).score > score_video(_write_mp4(tmp_path / "n.mp4", _noise())).score
    with pytest.raises(InputError, match=r"missing\.mp4.*does not exist"):
        read_frames(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError, match=r"junk\.mp4.*cannot decode"):
        read_frames(tmp_path / "junk.mp4")


def test_sample_indices() -> None:
    assert sample_indices(49, 8) == [0, 7, 14, 21, 27, 34, 41, 48]
    assert sample_indices(3, 8) == [0, 1, 2]
    assert sample_indices(10, 1) == [5]


# --------------------------------------------------------------------------- score_rows
def _videos(rows: list[tuple[str, int, str | None, str]]) -> pl.DataFrame:
    """A videos table: (query_id, sample_index, video_path, status) per row."""
    return pl.DataFrame([{
        "query_id": q, "query": f"query {q}", "sample_index": i, "prompt": f"prompt {q}-{i}",
        "video_path": path, "contact_sheet": None, "status": status,
        "error": None if status == "ok" else "CUDA out of memory", "pipeline": "tiny",
        "seed": 0, "num_frames": 10, "height": 64, "width": 64, "seconds": 0.1,
    } for q, i, path, status in rows], schema=polars_schema("videos"))


def test_frame_metrics_rows(tmp_path: Path) -> None:
    ok = _write_mp4(tmp_path / "a.mp4", _smooth())
    (tmp_path / "bad.mp4").write_bytes(b"junk")
    videos = _videos([("q1", 0, ok, "ok"), ("q1", 1, None, "error:oom"),
                      ("q1", 2, str(tmp_path / "bad.mp4"), "ok")])
    df = score_rows(videos, ScoreConfig())
    write_table(df, tmp_path / "rewards.parquet", "rewards")
    assert df["status"].to_list() == ["ok", "skipped:render-failed", "error:unreadable"]
    assert df["backend"].unique().to_list() == ["frame-metrics"]
    assert df["score"][0] > 0 and df["score"][1] is None and df["answers"][0] is None
    assert set(WEIGHTS) <= set(json.loads(df["metrics"][0]))
    assert df["error"][1] == "CUDA out of memory" and "cannot decode" in df["error"][2]


def test_checklist_rows_from_given_answers(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"{i}.mp4") for i in range(5)]
    videos = _videos([("q", i, p, "ok") for i, p in enumerate(paths)])
    holes = _answers(1)
    holes[7] = None
    given = {paths[0]: _answers(1, 4), paths[1]: [True] * 63, paths[2]: holes,
             paths[4]: [True] * 64}
    df = score_rows(videos, ScoreConfig(backend="checklist"), answers=given)
    write_table(df, tmp_path / "rewards.parquet", "rewards")
    assert df["status"].to_list() == ["ok", "error:invalid-answers", "error:unparseable",
                                      "error:no-answers", "ok"]
    assert df["score"][0] == pytest.approx(W1 + W4)
    assert df["visionreward_score"][4] == pytest.approx(SELECTED_SUM / 29)
    assert df["answers"][0].to_list() == _answers(1, 4)
    assert df["answers"][2].to_list()[7] is None          # kept for inspection, not scored
    assert "question(s) 8" in df["error"][2]
    with pytest.raises(ConfigError, match="needs the answers"):
        score_rows(videos, ScoreConfig(backend="checklist"))


# --------------------------------------------------------------------------- vlm-checklist
def _vlm_responder(seen: list[dict]):
    """Answers like a vision LLM: yes to every question except the ones whose query
    asks for a 'no' on questions 1 and 4; truncated answers for "unfinished" queries."""
    def respond(messages: list[dict]) -> str:
        content = messages[-1]["content"]
        images = [p for p in content if p["type"] == "image_url"]
        text = message_text(content)
        seen.append({"images": len(images), "urls": [p["image_url"]["url"] for p in images],
                     "text": re.search(r'in the text "(.*?)"', text).group(1)})
        numbers = [int(n) for n in re.findall(r"^(\d+)\. ", text, re.M)]
        no = {1, 4} if "mediocre" in text else set()
        if "unfinished" in text:
            numbers = numbers[:40]
        return "Sure.\n" + "\n".join(f"{n}. {'no' if n in no else 'yes'}" for n in numbers)
    return respond


@pytest.mark.parametrize("transport", ["http", "litellm"])
def test_vlm_checklist_through_a_real_server(tmp_path: Path, judge: LLMConfig, fake_llm,
                                             transport: str) -> None:
    seen: list[dict] = []
    fake_llm.fake.responder = _vlm_responder(seen)
    paths = [_write_mp4(tmp_path / f"{i}.mp4", _smooth(t=12)) for i in range(3)]
    videos = _videos([("a", 0, paths[0], "ok"), ("b", 0, paths[1], "ok"),
                      ("c", 0, paths[2], "ok"), ("d", 0, None, "error:oom")])
    videos = videos.with_columns(pl.Series("query", ["a great cat", "a mediocre cat",
                                                     "an unfinished cat", "a lost cat"]))
    cfg = ScoreConfig(backend="vlm-checklist", vlm_model="openai/fake-vlm")
    # a generous timeout: three 8-frame requests can take over a second on a busy machine
    llm = judge.model_copy(update={"transport": transport, "timeout_s": 10.0})
    df = score_rows(videos, cfg, llm)
    write_table(df, tmp_path / "rewards.parquet", "rewards")
    assert df["status"].to_list() == ["ok", "ok", "error:unparseable", "skipped:render-failed"]
    assert df["score"][0] == pytest.approx(SELECTED_SUM)
    assert df["score"][1] == pytest.approx(SELECTED_SUM - W1 - W4)
    assert df["visionreward_score"][0] == pytest.approx(SELECTED_SUM / 29)
    assert df["answers"][2].to_list()[40:] == [None] * 24      # what came back is kept
    assert "question(s) 41, 42" in df["error"][2]
    metrics = json.loads(df["metrics"][2])
    assert metrics["model"] == "openai/fake-vlm" and metrics["raw"].startswith("Sure.")
    assert {s["text"] for s in seen} == {"a great cat", "a mediocre cat", "an unfinished cat"}
    assert all(s["images"] == 8 for s in seen)
    assert all(u.startswith("data:image/jpeg;base64,") for u in seen[0]["urls"])


def test_the_videos_of_a_query_are_asked_the_same_questions(tmp_path: Path, judge: LLMConfig,
                                                           fake_llm) -> None:
    """The checklist asks about the user's query, not each video's own rewrite, so the
    scores of a query's videos compare the same answers (VisionReward's pair setting)."""
    seen: list[dict] = []
    fake_llm.fake.responder = _vlm_responder(seen)
    # two different videos: identical requests would be one call (the engine dedupes them)
    paths = [_write_mp4(tmp_path / f"{i}.mp4", _smooth(t=12, speed=2.0 + i)) for i in range(2)]
    videos = _videos([("q", 0, paths[0], "ok"), ("q", 1, paths[1], "ok")]).with_columns(
        pl.Series("prompt", ["A tabby cat naps on a sunny windowsill, soft light.",
                             "A cat, cinematic, 8k, dramatic lighting."]))
    cfg = ScoreConfig(backend="vlm-checklist", vlm_model="openai/fake-vlm")
    score_rows(videos, cfg, judge.model_copy(update={"timeout_s": 10.0}))
    assert [s["text"] for s in seen] == ["query q", "query q"]
    manifest = vr.write_manifest([VideoToScore(f"q/{i}", p, pr, "query q") for i, (p, pr) in
                                  enumerate(zip(paths, videos["prompt"], strict=True))],
                                 tmp_path / "m.jsonl")
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert entries[0]["questions"] == entries[1]["questions"] == cl.questions("query q")
    assert [e["prompt"] for e in entries] == videos["prompt"].to_list()


def test_vlm_checklist_needs_a_model_and_a_reachable_server(tmp_path: Path,
                                                             judge: LLMConfig) -> None:
    videos = _videos([("q", 0, _write_mp4(tmp_path / "a.mp4", _smooth()), "ok")])
    with pytest.raises(ConfigError, match=r"score\.vlm_model"):
        score_rows(videos, ScoreConfig(backend="vlm-checklist"), judge)
    dead = judge.model_copy(update={"api_base": "http://127.0.0.1:9/v1", "max_retries": 0})
    with pytest.raises(StageFailed, match="all 1 requests to openai/fake-vlm failed"):
        score_rows(videos, ScoreConfig(backend="vlm-checklist", vlm_model="openai/fake-vlm"),
                   dead)


# --------------------------------------------------------------------------- visionreward
def test_manifest_lists_the_64_questions(tmp_path: Path) -> None:
    path = vr.write_manifest([VideoToScore("q/0", "/v/a.mp4", "A dog runs.", "a dog\nrunning")],
                             tmp_path / "m.jsonl")
    [entry] = [json.loads(line) for line in path.read_text().splitlines()]
    assert entry["id"] == "q/0" and entry["video_path"] == "/v/a.mp4"
    assert entry["questions"] == cl.questions("a dog running")


def test_read_runner_output(tmp_path: Path) -> None:
    qa = [{"id": i + 1, "q": "q", "response": "yes" if i < 10 else "no"} for i in range(64)]
    out = tmp_path / "answers.jsonl"
    out.write_text(json.dumps({"id": "a", "QA": qa}) + "\n"
                   + json.dumps({"id": "b", "error": "RuntimeError: decord failed"}) + "\n"
                   + '{"id": "c", "QA": [')                   # torn by a killed run
    got = vr.read_output(out)
    assert set(got) == {"a", "b"}
    assert got["a"].values == [i < 10 for i in range(64)] and got["a"].status == "ok"
    assert got["b"].status == "error:visionreward" and "decord" in got["b"].error


def test_runner_refuses_a_bad_manifest_before_loading_the_model(tmp_path: Path) -> None:
    """The real runner, under this interpreter: it checks the manifest before importing
    torch or loading VisionReward, and the failure reaches the caller with the log tail."""
    gone = VideoToScore("q/0", str(tmp_path / "gone.mp4"), "A cat.", "a cat")
    manifest = vr.write_manifest([gone], tmp_path / "m.jsonl")
    with pytest.raises(StageFailed, match=r"(?s)exit 1.*gone\.mp4") as err:
        vr.run_runner(sys.executable, manifest, tmp_path / "out.jsonl", tmp_path / "log")
    assert "field 'video_path': no such file" in str(err.value)
    with pytest.raises(StageFailed, match="does not exist"):
        vr.run_runner(str(tmp_path / "no-python"), manifest, tmp_path / "o", tmp_path / "l")


def test_visionreward_resumes_from_answers_already_written(tmp_path: Path) -> None:
    """A rerun over a work_dir whose answers file already holds every video (a crashed
    batch that finished its last video) runs the real runner, which has nothing left to
    do, and scores from the answers; a re-rendered video would get a new id."""
    paths = [_write_mp4(tmp_path / f"{i}.mp4", _smooth(speed=i + 1)) for i in range(2)]
    videos = _videos([("q", 0, paths[0], "ok"), ("q", 1, paths[1], "ok"),
                      ("q", 2, str(tmp_path / "gone.mp4"), "ok")])
    work = tmp_path / "vr"
    work.mkdir()
    with (work / "answers.jsonl").open("w") as fh:
        for i, path in enumerate(paths):
            qa = [{"id": n + 1, "q": "q", "response": "yes" if n < 4 - 3 * i else "no"}
                  for n in range(64)]
            key = vr.manifest_id(VideoToScore(f"q/{i}", path, "", ""))
            fh.write(json.dumps({"id": key, "video_path": path, "QA": qa}) + "\n")
    cfg = ScoreConfig(backend="visionreward", visionreward_python=sys.executable,
                      visionreward_revision="0a1b2c")   # the runner takes the pinned commit
    df = score_rows(videos, cfg, work_dir=work)
    assert df["status"].to_list() == ["ok", "ok", "error:unreadable"]
    assert df["score"][:2].to_list() == pytest.approx([W1 + 0.25239747290239256 + W4, W1])
    assert "0 to do" in (work / "runner.log").read_text()
    assert read_table(write_table(df, tmp_path / "r.parquet", "rewards")).height == 3
    with pytest.raises(ConfigError, match="visionreward_python is not set"):
        score_rows(videos, ScoreConfig(backend="visionreward"))


def test_runner_imports_no_project_code() -> None:
    source = vr.RUNNER.read_text()
    assert "vpo_core" not in re.sub(r'"""[\s\S]*?"""', "", source)
    done = subprocess.run([sys.executable, str(vr.RUNNER), "--help"], capture_output=True,
                          text=True, check=True)
    assert "MANIFEST" in done.stdout.upper()
