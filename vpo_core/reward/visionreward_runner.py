"""Answer VisionReward-Video's checklist for a batch of videos. Runs INSIDE VisionReward's
own Python environment (torch 2.1, transformers 4.42, decord: see the install notes in
``vpo_core/reward/visionreward.py``), so it imports only that environment's packages and
the standard library, never ``vpo_core``.

    python visionreward_runner.py MANIFEST.jsonl OUT.jsonl [--model THUDM/VisionReward-Video]
                                  [--revision COMMIT] [--frames 24] [--device cuda]

MANIFEST: one ``{"id", "video_path", "prompt", "questions": [64 strings]}`` a line.
OUT: one line per video in VisionReward's QA-format, as VPO's pipeline reads it:
``{"id", "video_path", "prompt", "QA": [{"id": 1, "q": ..., "response": "yes"}, ...]}``,
or ``{"id", "video_path", "error": ...}`` for a video that could not be scored. OUT is
appended to and flushed after each video; ids already in it are skipped, so a crashed
batch resumes where it stopped. The manifest is checked (fields, files) before the model
is loaded, so a bad batch fails in seconds, not after a multi-minute model load.

Each answer is the model's greedy first token after the question, as in VisionReward's
published ``inference-video.py``; frames are taken one per second of video (the
"chat" strategy of CogVLM2-Video), at most ``--frames``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

REQUIRED = ("id", "video_path", "prompt", "questions")


def read_manifest(path: str) -> list[dict]:
    """The manifest's entries; SystemExit naming the line and field of the first problem."""
    entries = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{number}: not JSON: {exc}") from None
            missing = [k for k in REQUIRED if k not in entry]
            if missing:
                raise SystemExit(f"{path}:{number}: missing field(s) {missing}")
            if not isinstance(entry["questions"], list) or not entry["questions"]:
                raise SystemExit(f"{path}:{number}: field 'questions' must be a non-empty list")
            if not os.path.isfile(entry["video_path"]):
                raise SystemExit(f"{path}:{number}: field 'video_path': no such file "
                                 f"{entry['video_path']}")
            entries.append(entry)
    return entries


def done_ids(path: str) -> set[str]:
    """Ids already answered in OUT (a torn last line from a crash is ignored)."""
    if not os.path.exists(path):
        return set()
    done = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                done.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def load_video(path: str, max_frames: int):
    """(C, T, H, W) uint8 tensor: the frame closest to each whole second, at most
    ``max_frames``."""
    from decord import VideoReader, bridge, cpu

    bridge.set_bridge("torch")
    reader = VideoReader(path, ctx=cpu(0))
    starts = [float(t[0]) for t in reader.get_frame_timestamp(list(range(len(reader))))]
    picks: list[int] = []
    for second in range(round(max(starts)) + 1):
        picks.append(min(range(len(starts)), key=lambda i, s=second: abs(starts[i] - s)))
        if len(picks) >= max_frames:
            break
    return reader.get_batch(picks).permute(3, 0, 1, 2)


def load_model(name: str, device: str, revision: str | None = None):
    """Tokenizer, model and dtype (bf16 on Ampere or newer, fp16 on older GPUs, fp32 on
    CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device.startswith("cuda"):
        major = torch.cuda.get_device_capability()[0]
        dtype = torch.bfloat16 if major >= 8 else torch.float16
    else:
        dtype = torch.float32
    # VisionReward-Video is a CogVLM2 model whose architecture ships as code in its hub repo;
    # it runs only in its own environment, on weights the user chose to download, at the
    # commit they pinned (score.visionreward_revision) when they pinned one.
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(name, revision=revision, torch_dtype=dtype,
                                                 trust_remote_code=True).eval().to(device)
    return tokenizer, model, dtype


def answer(tokenizer, model, dtype, device: str, video, question: str) -> str:
    """The model's greedy first token after ``question``, lower-cased ("yes" / "no")."""
    import torch

    built = model.build_conversation_input_ids(tokenizer=tokenizer, query=question,
                                               images=[video], history=[],
                                               template_version="chat")
    inputs = {
        "input_ids": built["input_ids"].unsqueeze(0).to(device),
        "token_type_ids": built["token_type_ids"].unsqueeze(0).to(device),
        "attention_mask": built["attention_mask"].unsqueeze(0).to(device),
        "images": [[built["images"][0].to(device).to(dtype)]],
    }
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=1, do_sample=False,
                             pad_token_id=eos[0] if isinstance(eos, list) else eos)
    new = out[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True).strip().lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Answer VisionReward-Video's checklist.")
    parser.add_argument("manifest")
    parser.add_argument("out")
    parser.add_argument("--model", default="THUDM/VisionReward-Video")
    parser.add_argument("--revision", default=None, help="a commit of the model's hub repo")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--device", default=None, help="default: cuda when available")
    args = parser.parse_args(argv)

    entries = read_manifest(args.manifest)
    done = done_ids(args.out)
    todo = [e for e in entries if e["id"] not in done]
    print(f"{len(entries)} videos in the manifest, {len(done)} already answered, "
          f"{len(todo)} to do", flush=True)
    if not todo:
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, model, dtype = load_model(args.model, device, args.revision)
    with open(args.out, "a", encoding="utf-8") as out:
        for n, entry in enumerate(todo, 1):
            record = {"id": entry["id"], "video_path": entry["video_path"],
                      "prompt": entry["prompt"]}
            try:
                video = load_video(entry["video_path"], args.frames)
                record["QA"] = [{"id": i, "q": q,
                                 "response": answer(tokenizer, model, dtype, device, video, q)}
                                for i, q in enumerate(entry["questions"], 1)]
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # one bad video must not end the batch
                traceback.print_exc()
                record["error"] = f"{type(exc).__name__}: {exc}"
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            print(f"[{n}/{len(todo)}] {entry['id']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
