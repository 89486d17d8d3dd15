"""benchmarks/gpu_check.py stays alive without a GPU: ``--device cpu --tiny`` runs every
part through the project's trainer, ZeRO-3 launcher and renderer, and its JSON holds
figures that agree with each other and with the sizes it was given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.gpu_check import PARTS, PROJECTIONS, TINY, gpu_hours, mfu, peak_tflops

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    """One tiny CPU run (a peak of 1 TFLOP/s given, so MFU is computed)."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    out, work = tmp / "gpu_check.json", tmp / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--json",
         str(out), "--work-dir", str(work), "--peak-tflops", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, work


pytestmark = pytest.mark.slow


def test_every_part_runs_and_the_table_is_printed(run) -> None:
    report, stdout, _ = run
    assert {p: r["status"] for p, r in report["parts"].items()} == dict.fromkeys(PARTS, "ok")
    assert all(r["elapsed_s"] > 0 for r in report["parts"].values())
    env = report["environment"]
    assert env["device"] == "cpu" and env["versions"]["trl"] and env["versions"]["deepspeed"]
    assert report["sizes"] == "tiny" and report["peak_tflops"] == 1.0 and report["date"]
    for text in ("SFT fp32", "ZeRO-3 vs plain", "GPU-hours for 30,000 videos at 50 steps",
                 "mp4 round trip", "elapsed per part"):
        assert text in stdout


def test_training_figures_match_the_sizes_and_each_other(run) -> None:
    report, _, _ = run
    parts = report["parts"]
    assert parts["prepare"]["tokens_per_sequence"] == TINY.seq_len  # rows fill max_length
    params = parts["prepare"]["params"]
    for part, sequences in (("sft", TINY.sft_batch), ("dpo", 2 * TINY.dpo_batch),
                            ("zero3", TINY.sft_batch)):
        r = parts[part]
        assert r["steps"] == TINY.train_steps and r["timed_steps"] == TINY.train_steps - 1
        assert r["tokens_per_step"] == sequences * TINY.seq_len  # chosen + rejected for DPO
        assert r["step_s"] > 0 and r["peak_memory_gb"] > 0 and r["params"] == params
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_s"])
        assert r["mfu"] == pytest.approx(6 * params * r["tokens_per_s"] / 1e12)
    assert parts["dpo"]["mfu_with_reference"] == pytest.approx(parts["dpo"]["mfu"] * 8 / 6)
    assert parts["zero3"]["zero_stage"] == 3 and parts["sft"]["zero_stage"] == 0


def test_zero3_went_through_the_launcher(run) -> None:
    _, _, work = run
    launch = yaml.safe_load((work / "train-zero3" / "accelerate.yaml").read_text())
    assert launch["distributed_type"] == "DEEPSPEED" and launch["num_processes"] == 1
    assert launch["deepspeed_config"]["zero_stage"] == 3
    assert (work / "train-zero3" / "model" / "config.json").is_file()  # gathered and saved


def test_render_figures_and_projections_agree(run) -> None:
    report, _, _ = run
    r = report["parts"]["render"]
    assert r["video"] == {"frames": 9, "height": 64, "width": 64, "guidance_scale": 6.0,
                          "latent_tokens": 3 * 4 * 4}
    assert r["steps"] == TINY.render_steps and 0 < r["step_s"] < r["video_s"]
    assert r["fixed_s_per_video"] == pytest.approx(r["video_s"] - r["steps"] * r["step_s"])
    assert all(d["seconds"] > 0 and d["rss_peak_gb"] > 0 for d in r["vae_decode"].values())
    assert [(p["videos"], p["steps"]) for p in report["projections"]] == list(PROJECTIONS)
    for p in report["projections"]:
        assert p["gpu_hours"] == pytest.approx(
            p["videos"] * (r["fixed_s_per_video"] + p["steps"] * r["step_s"]) / 3600)


def test_mp4_round_trip_keeps_the_video(run) -> None:
    m = run[0]["parts"]["mp4"]
    assert m["shape"] == [9, 64, 64, 3] and m["shape_ok"] and m["contact_sheet"]
    assert m["mp4_bytes"] > 0
    # H.264 at crf 10 on the random pipeline's noisy frames; another video would be ~85 off.
    assert m["mean_abs_diff_vs_rerender"] < 30


def test_peak_table_and_formulas() -> None:
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Some New GPU") is None
    assert peak_tflops("NVIDIA H200", override=500.0) == 500.0
    assert mfu(1_000_000_000, 10_000, 989.0) == pytest.approx(6e13 / 989e12)
    assert mfu(1, 1, None) is None
    assert gpu_hours(30_000, 50, 1.0, 20.0) == pytest.approx(30_000 * 70 / 3600)
