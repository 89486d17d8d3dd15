"""Run a training: in this process, or with ``accelerate launch`` (DeepSpeed ZeRO) when
more than one process or a ZeRO stage is configured. Either way progress is read back
from ``progress.jsonl`` and reported through a callback while it runs.

The accelerate file starts from ``configs/accelerate/zero3.yaml`` (the paper's 8-GPU
ZeRO-3 setting) with processes, ZeRO stage, offload, precision and CPU use taken from the
configuration, so the launcher path CI runs on two CPU processes over gloo is the one a
GPU cluster runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vpo_core.config import CONFIGS_DIR
from vpo_core.errors import StageFailed
from vpo_core.training.trainer import METRICS, PROGRESS, TrainSpec, train

ACCELERATE_TEMPLATE = CONFIGS_DIR / "accelerate" / "zero3.yaml"
Progress = Callable[[dict[str, Any]], None]


def accelerate_config(spec: TrainSpec, cuda: bool) -> dict[str, Any]:
    """The accelerate settings of one run, from the shipped ZeRO-3 template."""
    cfg = spec.config()
    out = yaml.safe_load(ACCELERATE_TEMPLATE.read_text())
    out["num_processes"] = cfg.num_processes
    out["use_cpu"] = not cuda
    out["mixed_precision"] = "bf16" if cfg.bf16 and cuda else "no"
    if cfg.zero_stage:
        out["deepspeed_config"].update(zero_stage=cfg.zero_stage,
                                       zero3_init_flag=cfg.zero_stage == 3,
                                       offload_optimizer_device=cfg.offload,
                                       offload_param_device=cfg.offload
                                       if cfg.zero_stage == 3 else "none")
    else:
        out["distributed_type"] = "MULTI_GPU" if cuda else "MULTI_CPU"
        del out["deepspeed_config"]
    return out


class _Follower(threading.Thread):
    """Reads new lines of progress.jsonl and hands them to the callback."""

    def __init__(self, path: Path, on_progress: Progress | None) -> None:
        super().__init__(daemon=True)
        self.path, self.on_progress = path, on_progress
        self.stop = threading.Event()
        self.offset = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            self.stop.wait(1.0)
        self.poll()

    def poll(self) -> None:
        """Hand over the complete lines written since the last poll."""
        if self.on_progress is None or not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            self.on_progress(json.loads(line))


def run_training(spec: TrainSpec, on_progress: Progress | None = None) -> dict[str, Any]:
    """Train as configured and return the final metrics (from ``metrics.json``)."""
    import torch

    cfg = spec.config()
    output = Path(spec.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    follower = _Follower(output / PROGRESS, on_progress)
    follower.start()
    try:
        if cfg.num_processes == 1 and cfg.zero_stage == 0:
            return train(spec)
        _launch(spec, output, torch.cuda.is_available())
        return json.loads((output / METRICS).read_text())
    finally:
        follower.stop.set()
        follower.join()


def _launch(spec: TrainSpec, output: Path, cuda: bool) -> None:
    spec_file, launch_file = output / "spec.json", output / "accelerate.yaml"
    spec.save(spec_file)
    launch_file.write_text(yaml.safe_dump(accelerate_config(spec, cuda)))
    cfg = spec.config()
    threads = max(1, (os.cpu_count() or 1) // cfg.num_processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    log = output / "launcher.log"
    with open(log, "ab") as fh:
        code = subprocess.call(
            [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
             str(launch_file), "-m", "vpo_core.training", "--spec", str(spec_file)],
            stdout=fh, stderr=subprocess.STDOUT, env=env)
    if code != 0 or not (output / METRICS).exists():
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise StageFailed(f"accelerate launch exited with {code}; last lines of {log}:\n"
                          + "\n".join(tail))
