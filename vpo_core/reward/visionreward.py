"""The ``visionreward`` reward: VisionReward-Video (THUDM, a CogVLM2-Video fine-tune)
answers the 64 checklist questions about each video, in its OWN Python environment.

VisionReward pins torch 2.1 and transformers 4.42 and needs decord; the project never
imports it. This module writes a JSONL manifest (id, video path, prompt, the 64 questions),
runs ``[score.visionreward_python, visionreward_runner.py, manifest, out]`` as a
subprocess, and reads the answers back from the runner's output, in VisionReward's
QA-format. The runner appends and skips videos already answered, so a rerun with the same
``work_dir`` resumes a crashed batch.

Installing VisionReward (CogVLM2-Video based, ~12B parameters: a GPU that holds it in bf16,
40 GB or more to be comfortable)::

    git clone https://github.com/THUDM/VisionReward && cd VisionReward
    python3.10 -m venv ~/venvs/visionreward
    ~/venvs/visionreward/bin/pip install -r requirements.txt   # torch 2.1, transformers 4.42
    ~/venvs/visionreward/bin/huggingface-cli download THUDM/VisionReward-Video

then set ``score.backend: visionreward``, ``score.visionreward_python:
~/venvs/visionreward/bin/python`` and ``score.visionreward_revision`` to the commit of the
model repository you downloaded (its CogVLM2 code runs with ``trust_remote_code``).
Check the environment on its own with ``~/venvs/visionreward/bin/python
vpo_core/reward/visionreward_runner.py manifest.jsonl out.jsonl``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from vpo_core.errors import ConfigError, StageFailed
from vpo_core.reward.checklist import Answers, VideoToScore, parse_answers, questions
from vpo_core.tables import file_sha256

RUNNER = Path(__file__).with_name("visionreward_runner.py")
LOG_TAIL_LINES = 40


def manifest_id(video: VideoToScore) -> str:
    """The runner's key of a video: its row id and content hash, so that answers kept in
    a work_dir are reused only for the very same file."""
    return f"{video.id}@{file_sha256(video.video_path)[:16]}"


def write_manifest(videos: Sequence[VideoToScore], path: str | Path) -> Path:
    """One JSON line per video: id, video path, prompt, query and the 64 questions about
    the query."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for v in videos:
            fh.write(json.dumps({"id": v.id, "video_path": v.video_path, "prompt": v.prompt,
                                 "query": v.query, "questions": questions(v.query)},
                                ensure_ascii=False) + "\n")
    return path


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file (empty when there is none)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def run_runner(python: str, manifest: Path, out: Path, log: Path,
               runner: Path = RUNNER, timeout_s: float | None = None,
               model: str | None = None, revision: str | None = None) -> None:
    """Run the runner in VisionReward's environment, its stdout and stderr going to
    ``log``; StageFailed with the log's tail when it fails or cannot start."""
    cmd = [python, str(runner), str(manifest), str(out),
           *(["--model", model] if model else []),
           *(["--revision", revision] if revision else [])]
    try:
        with log.open("a", encoding="utf-8") as fh:
            code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                  timeout=timeout_s, check=False).returncode
    except FileNotFoundError:
        raise StageFailed(f"score.visionreward_python {python!r} does not exist: point it at "
                          "the python of VisionReward's environment") from None
    except subprocess.TimeoutExpired:
        raise StageFailed(f"VisionReward runner took longer than {timeout_s} s; log {log}:\n"
                          f"{log_tail(log)}") from None
    if code != 0:
        raise StageFailed(f"VisionReward runner failed (exit {code}): {' '.join(cmd)}\n"
                          f"log {log}, last lines:\n{log_tail(log)}")


def read_output(path: str | Path) -> dict[str, Answers]:
    """The runner's answers by id (the last line of an id wins)."""
    out: dict[str, Answers] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
        if not isinstance(item, dict) or "id" not in item:
            continue
        if item.get("error"):
            out[item["id"]] = Answers(None, "error:visionreward", str(item["error"])[:500])
        else:
            raw = [str(qa.get("response")) for qa in item.get("QA", []) if isinstance(qa, dict)]
            out[item["id"]] = Answers(parse_answers(item), detail={"raw": raw})
    return out


def ask_checklist(videos: Sequence[VideoToScore], python: str | None,
                  work_dir: str | Path | None = None, model: str | None = None,
                  revision: str | None = None) -> dict[str, Answers]:
    """VisionReward's answers for each video, by id. ``work_dir`` keeps the manifest, the
    answers and the log, so a rerun resumes (a temporary folder when None). The runner
    knows each video by its id and content hash: a re-rendered video is asked again.
    ``model`` / ``revision``: the weights and the hub commit (the runner's defaults when
    None)."""
    if not python:
        raise ConfigError("score.visionreward_python is not set: install VisionReward in its "
                          "own environment (see vpo_core/reward/visionreward.py) and point "
                          "it at that environment's python")
    result: dict[str, Answers] = {}
    keyed: dict[str, VideoToScore] = {}
    for v in videos:
        if not Path(v.video_path).is_file():
            result[v.id] = Answers(None, "error:unreadable", f"no such file {v.video_path}")
        else:
            keyed[manifest_id(v)] = v
    if not keyed:
        return result
    keep = nullcontext(str(work_dir)) if work_dir is not None else \
        tempfile.TemporaryDirectory(prefix="visionreward-")
    with keep as where:
        folder = Path(where)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = folder / "manifest.jsonl"
        write_manifest([VideoToScore(k, v.video_path, v.prompt, v.query)
                        for k, v in keyed.items()],
                       manifest)
        out, log = folder / "answers.jsonl", folder / "runner.log"
        run_runner(python, manifest, out, log, model=model, revision=revision)
        answers = read_output(out) if out.is_file() else {}
    missing = Answers(None, "error:visionreward", "the runner wrote no answer for this video")
    result.update({v.id: answers.get(key, missing) for key, v in keyed.items()})
    return result
