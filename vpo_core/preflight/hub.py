"""Models and data sets by name: a local folder, the bundled model, or a Hugging Face hub
id. Offline, a hub id must be in the local cache the run will read (``HF_HOME``, which
the ``vpo`` command points into the work directory unless you exported it); online, the
hub's metadata calls say whether it exists, whether you may download it (gated models),
and how much the run will download. Nothing here downloads weights."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from vpo_core.models.bundled import BUNDLED_NAME, BUNDLED_PREFIX, TINY_LLAMA
from vpo_core.preflight.findings import Finding

TRANSFORMERS_MARKER = "config.json"
DIFFUSERS_MARKER = "model_index.json"
# Parameter counts of models that are not read from a folder: the bundled SmolLM2 (counted
# in its converted safetensors).
KNOWN_PARAMS = {f"{BUNDLED_PREFIX}{BUNDLED_NAME}": 134_515_008,
                f"{BUNDLED_PREFIX}{TINY_LLAMA}": 336_192}
# Weight formats a loader skips when safetensors are there (not downloaded, not counted).
ALTERNATIVE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "*.onnx_data",
                       "*.gguf", "*.ckpt", "original/*")
_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)([bm])(?![a-z])")


@dataclass(frozen=True)
class ModelFacts:
    """A model check's finding, and what the disk estimate needs from it."""

    finding: Finding
    params: int | None = None
    download_bytes: int = 0


def hub_cache() -> Path:
    """The hub cache the run will use, read from the environment now (huggingface_hub
    reads it once at import, possibly before the ``vpo`` command set HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"),
                                             "huggingface")
    return Path(home).expanduser() / "hub"


def datasets_cache() -> Path:
    """Where the datasets library keeps the Arrow copies it loads offline."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    return hub_cache().parent / "datasets"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set: the run reads the cache only, so the cache must hold it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_like_path(name: str) -> bool:
    """A folder rather than a hub id (``org/name``)."""
    return (name.startswith(("/", ".", "~")) or name.count("/") != 1
            or Path(name).expanduser().exists())


def count_params(folder: Path) -> int | None:
    """Parameters of the safetensors weights in ``folder`` (read from the file headers,
    nothing loaded); None when there are none."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), "np") as fh:
            total += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118
    return total


def params_from_name(name: str) -> int | None:
    """``8B`` / ``135M`` in a model's name: the fallback when no weights can be read."""
    if name in KNOWN_PARAMS:
        return KNOWN_PARAMS[name]
    found = _SIZE_IN_NAME.findall(name.rsplit("/", 1)[-1].lower())
    if not found:
        return None
    value, unit = found[-1]
    return int(float(value) * (1e9 if unit == "b" else 1e6))


def cached_snapshot(repo: str, repo_type: str = "model") -> Path | None:
    """The newest snapshot of ``repo`` in the local hub cache, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, repo_type=repo_type, local_files_only=True,
                                      cache_dir=hub_cache()))
    except LocalEntryNotFoundError:
        return None


def _download_bytes(siblings: list, patterns: list[str] | None = None) -> int:
    """Bytes a loader fetches of a repo's files: safetensors over other weight formats,
    only the files matching ``patterns`` when given."""
    files = [(s.rfilename, s.size or 0) for s in siblings or []]
    if patterns:
        files = [(n, size) for n, size in files if any(fnmatch(n, p) for p in patterns)]
    if any(n.endswith(".safetensors") for n, _ in files):
        files = [(n, size) for n, size in files
                 if not any(fnmatch(n, p) for p in ALTERNATIVE_WEIGHTS)]
    return sum(size for _, size in files)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_model(field: str, name: str, marker: str, *, offline: bool,
                remote_pool: str | None = None) -> ModelFacts:
    """Whether ``name`` (a folder or a hub id holding ``marker``) can be loaded by the run.

    ``remote_pool``: the stages loading it run on that pool's workers, whose folders and
    caches are not this machine's; what is missing here is then a warning, not an error.
    """
    missing = "warning" if remote_pool else "error"
    where = f" (here; the workers of pool {remote_pool!r} use their own)" if remote_pool else ""
    if looks_like_path(name):
        folder = Path(name).expanduser()
        if not (folder / marker).is_file():
            what = "has no " + marker if folder.is_dir() else "does not exist"
            return ModelFacts(Finding(missing, field, f"folder {folder} {what}{where}",
                                      "point it at a saved model folder, or a hub id "
                                      "(org/name)"))
        return ModelFacts(Finding("ok", field, f"folder {folder}"), count_params(folder))

    from huggingface_hub.errors import HFValidationError

    try:
        snapshot = cached_snapshot(name)
    except HFValidationError as exc:
        return ModelFacts(Finding("error", field, f"{name!r} is not a valid hub id: {exc}",
                                  "use org/name as on huggingface.co, or a local folder"))
    if snapshot is not None and not (snapshot / marker).is_file():
        return ModelFacts(Finding("error", field, f"{name} in the local cache ({snapshot}) has "
                                  f"no {marker}", f"is it the right kind of model? "
                                  f"{marker} is what the loader reads"))
    params = (count_params(snapshot) if snapshot else None) or params_from_name(name)
    if offline or hub_offline():
        if snapshot is not None:
            return ModelFacts(Finding("ok", field, f"{name} in the local cache{where}: "
                                      f"{snapshot}"), params)
        if hub_offline():
            return ModelFacts(Finding(missing, field, f"{name} is not in the local Hugging "
                                      f"Face cache {hub_cache()}{where} and HF_HUB_OFFLINE "
                                      "is set", f"check the id; download it once with "
                                      f"HF_HOME={hub_cache().parent} hf download {name} "
                                      "(network on), or give a local folder"), params)
        return ModelFacts(Finding("warning", field, f"{name} is not in the local cache "
                                  f"{hub_cache()}{where}; the run will download it (not "
                                  "checked on the hub: --offline)", "run vpo check without "
                                  "--offline to look it up"), params)
    return _check_on_hub(field, name, marker, snapshot, params, missing, where)


def _check_on_hub(field: str, name: str, marker: str, snapshot: Path | None,
                  params: int | None, missing: str, where: str) -> ModelFacts:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    api = HfApi()
    try:
        info = api.model_info(name, files_metadata=True)
        api.auth_check(name)
    except GatedRepoError:
        return ModelFacts(Finding("error", field, f"{name} is gated and this token may not "
                                  "download it", f"accept its licence on "
                                  f"https://huggingface.co/{name} and log in (hf auth login, "
                                  "or HF_TOKEN)"), params)
    except RepositoryNotFoundError:
        return ModelFacts(Finding("error", field, f"no model {name} on the Hugging Face hub "
                                  "(or it is private)", "check the spelling (org/name), or "
                                  "log in for a private model"), params)
    except Exception as exc:  # network down, hub unavailable: not a verdict on the model
        return ModelFacts(Finding("warning", field, f"could not reach the hub for {name}: "
                                  f"{type(exc).__name__}: {exc}", "check the network, or "
                                  "run vpo check --offline"), params)
    files = {s.rfilename for s in info.siblings or []}
    if marker not in files:
        return ModelFacts(Finding("error", field, f"{name} on the hub has no {marker}",
                                  "is it the right kind of model?"), params)
    if info.safetensors is not None:
        params = info.safetensors.total
    if snapshot is not None:
        return ModelFacts(Finding("ok", field, f"{name} on the hub, in the local cache"
                                  f"{where}"), params)
    size = _download_bytes(info.siblings)
    return ModelFacts(Finding("ok", field, f"{name} on the hub; the run downloads "
                              f"{_gb(size)} into {hub_cache()}{where}"), params,
                      size if not where else 0)


def check_dataset(field: str, repo: str, data_files: str | None, *, offline: bool
                  ) -> tuple[Finding, int]:
    """A Hugging Face data set input: in the local caches (offline) or on the hub; with
    the bytes the run will download."""
    from huggingface_hub import try_to_load_from_cache

    cached = datasets_cache() / repo.replace("/", "___")
    local = cached.is_dir() or (
        isinstance(try_to_load_from_cache(repo, data_files, cache_dir=hub_cache(),
                                          repo_type="dataset"), str)
        if data_files else cached_snapshot(repo, "dataset") is not None)
    if offline or hub_offline():
        if local:
            return Finding("ok", field, f"data set {repo} in the local cache"), 0
        level = "error" if hub_offline() else "warning"
        return Finding(level, field, f"data set {repo} is not in the local caches "
                       f"({hub_cache()}, {datasets_cache()})"
                       + (" and HF_HUB_OFFLINE is set" if hub_offline() else
                          "; the run will download it (not checked on the hub: --offline)"),
                       "download it once with the network on, or give a local file"), 0
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = HfApi().dataset_info(repo, files_metadata=True)
    except GatedRepoError:
        return Finding("error", field, f"data set {repo} is gated", f"accept its terms on "
                       f"https://huggingface.co/datasets/{repo} and log in"), 0
    except RepositoryNotFoundError:
        return Finding("error", field, f"no data set {repo} on the Hugging Face hub",
                       "check the spelling (hf:org/name)"), 0
    except Exception as exc:
        return Finding("warning", field, f"could not reach the hub for data set {repo}: "
                       f"{type(exc).__name__}: {exc}", "check the network"), 0
    size = 0 if local else _download_bytes(info.siblings, [data_files] if data_files else None)
    if data_files and not any(fnmatch(s.rfilename, data_files) for s in info.siblings or []):
        return Finding("error", field, f"data set {repo} has no file matching "
                       f"curate.hf_data_files={data_files!r}", "check curate.hf_data_files"), 0
    return Finding("ok", field, f"data set {repo} on the hub" + (
        ", in the local cache" if local else f"; the run downloads {_gb(size)}")), size
