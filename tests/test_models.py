"""The bundled models: SmolLM2 converted from its GGUF, and the tiny random Llama a
rehearsal trains (built in code, with SmolLM2's tokenizer retrained to 4,096 tokens and
SmolLM2's chat template)."""

from pathlib import Path

import pytest

from vpo_core.models.bundled import TINY_LLAMA, TINY_VOCAB, bundled_model_dir, resolve_model


def test_tiny_llama_is_built_once_and_generates(bundled_models: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = bundled_model_dir(bundled_models, TINY_LLAMA)
    assert resolve_model(f"bundled:{TINY_LLAMA}", bundled_models) == str(folder)
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert bundled_model_dir(bundled_models, TINY_LLAMA) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime          # made once
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    assert sum(p.numel() for p in model.parameters()) == 336_192
    assert len(tokenizer) == TINY_VOCAB == model.config.vocab_size
    message = "A golden retriever surfs a wave at sunset"     # words of the template are
    assert len(tokenizer(message)["input_ids"]) <= 12          # whole tokens, as in SmolLM2
    assert tokenizer.decode(tokenizer(message)["input_ids"]) == message
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "a fox"}],
                                        add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 4


def test_unknown_bundled_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown bundled model 'gpt-5'"):
        resolve_model("bundled:gpt-5", tmp_path)
    assert resolve_model("meta-llama/Meta-Llama-3-8B-Instruct", tmp_path) == \
        "meta-llama/Meta-Llama-3-8B-Instruct"
