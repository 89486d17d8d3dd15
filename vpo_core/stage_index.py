"""The work directory's index of stage outputs: which outputs each stage made under which
configuration.

A stage run alone (``vpo score``, a stage deployment) takes its inputs as parameters or
finds them here: the newest outputs of its upstream stages made under the current
configuration (:func:`vpo_core.stages.fingerprint`). When there are none it stops at once
and names the command that makes them; it never runs its upstream stages by itself (only
the pipeline composes stages). Locations are relative to the work directory, as in every
:class:`~vpo_core.tables.DataRef`, so a moved work directory keeps its index.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from vpo_core.errors import StageFailed
from vpo_core.stages import fingerprint, spec
from vpo_core.tables import DataRef

INDEX = "stage-outputs.json"
_OUTPUT = TypeAdapter(DataRef | str | dict[str, DataRef | str])


class MissingInput(StageFailed):
    """A stage run alone found no input made under the current configuration."""


@contextmanager
def _locked(root: Path) -> Iterator[Path]:
    """The index file, under an exclusive lock (two stage flows may finish at once)."""
    path = root / INDEX
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{INDEX}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def record(root: Path, config: dict[str, Any], stage: str, outputs: dict[str, Any]) -> None:
    """File ``outputs`` (DataRefs or hub ids) of ``stage`` under the configuration's
    fingerprint; the newest run replaces an older one with the same fingerprint."""
    entry = {"outputs": _OUTPUT.dump_python(outputs, mode="json"),
             "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with _locked(root) as path:
        index = _read(path)
        index.setdefault(stage, {})[fingerprint(config, stage)] = entry
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)


def lookup(root: Path, config: dict[str, Any], stage: str) -> dict[str, Any] | None:
    """The outputs ``stage`` made under this configuration, if they are all still there."""
    entry = _read(root / INDEX).get(stage, {}).get(fingerprint(config, stage))
    if entry is None:
        return None
    outputs = {k: _OUTPUT.validate_python(v) for k, v in entry["outputs"].items()}
    refs = [v for v in outputs.values() if isinstance(v, DataRef)]
    return outputs if all(r.is_valid() for r in refs) else None


def resolve(root: Path, config: dict[str, Any], stage: str,
            given: dict[str, Any]) -> dict[str, Any]:
    """The inputs of ``stage``: those ``given`` (not None), the others from the index.

    Raises :class:`MissingInput` naming the command that makes a missing one.
    """
    out = dict(given)
    for item in spec(stage).inputs:
        if out.get(item.param) is not None or not item.needed_by(config):
            continue
        found = lookup(root, config, item.stage)
        if found is None or item.output not in found:
            raise MissingInput(
                f"{stage}: needs `{item.param}` ({item.output} of the {item.stage} stage) and "
                f"the work directory {root} has none made under this configuration. Run "
                f"`vpo {item.stage}` first (same --config/--set), or `vpo {stage} "
                f"--with-upstream` to run the stages before it, or pass "
                f"--{item.param.replace('_', '-')} PATH.")
        out[item.param] = found[item.output]
    return out


def stage_inputs(config: Any, stage: str, **given: Any) -> dict[str, Any]:
    """:func:`resolve` for a :class:`~vpo_core.config.PipelineConfig`."""
    return resolve(Path(config.work_dir).expanduser().resolve(),
                   config.model_dump(mode="json"), stage, given)


def stage_outputs(config: Any, stage: str, outputs: dict[str, Any]) -> dict[str, Any]:
    """:func:`record` for a :class:`~vpo_core.config.PipelineConfig`; returns
    ``outputs``."""
    record(Path(config.work_dir).expanduser().resolve(), config.model_dump(mode="json"),
           stage, outputs)
    return outputs


def trained_models(config: Any) -> dict[str, DataRef | str]:
    """The models the pipeline trained under this configuration, as evaluate names them
    (``base`` when ``evaluate.base``, ``sft``, ``dpo``): what ``vpo evaluate`` compares
    when no model is given."""
    root, dump = Path(config.work_dir).expanduser().resolve(), config.model_dump(mode="json")
    sft, dpo = lookup(root, dump, "train-sft") or {}, lookup(root, dump, "train-dpo") or {}
    found = {"base": sft.get("base") if config.evaluate.base else None,
             "sft": sft.get("model"), "dpo": dpo.get("model")}
    return {k: v for k, v in found.items() if v is not None}
