"""What a trained model carries with it: a Hub model card (licence, base model, the exact
instruction, usage, data and its hash, hyper-parameters, final metrics, the evaluation once
``vpo export --eval`` adds it) and its loss curve as a PNG."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vpo_core import __version__
from vpo_core.models.bundled import BUNDLED_NAME
from vpo_core.prompts.templates import optimizer_messages

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

    from vpo_core.config import TrainDpoConfig, TrainSftConfig
    from vpo_core.training.trainer import TrainSpec

_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
         "mean_token_accuracy", "learning_rate")


def loss_plot(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss (and DPO reward margin when present) per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, [h["loss"] for h in history], marker="o", label="loss")
    margins = [h.get("rewards/margins") for h in history]
    if any(m is not None for m in margins):
        ax.plot(steps, [m if m is not None else float("nan") for m in margins], marker="s",
                label="reward margin")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(spec: TrainSpec, cfg: TrainSftConfig | TrainDpoConfig,
                 metrics: dict[str, Any], output: Path) -> None:
    """``model/README.md`` (the model card) and ``loss.png``."""
    history = metrics["history"]
    if history:
        loss_plot(history, output / "loss.png", f"VPO {spec.kind.upper()}: {output.name}")
    final = metrics["final"]
    rows = [f"| {k} | {final[k]:.4g} |" for k in _KEYS if isinstance(final.get(k), float)]
    hyper = "\n".join(f"| {k} | {v} |" for k, v in cfg.model_dump().items())
    resumed = f" (resumed from {metrics['resumed_from']})" if metrics["resumed_from"] else ""
    training = f"""Trained with trl ({spec.kind.upper()}) on {dt.date.today().isoformat()} from
`{spec.base_model}`.

- Data: `{spec.data}` ({metrics['rows']:,} training rows, sha256 `{metrics['data_sha256']}`)
- Steps: {metrics['steps']}{resumed}; mean training loss {metrics['train_loss']:.4f};
  max length {spec.max_length}; seed {spec.seed}

### Final metrics (last logged step)

| metric | value |
|---|---:|
{chr(10).join(rows)}

### Hyper-parameters

| name | value |
|---|---|
{hyper}
"""
    card = model_card(spec.base_model, spec.kind, training)
    card.save(output / "model" / "README.md")


def summary_markdown(stage: str, metrics: dict[str, Any], model: Any, loss_png: str) -> str:
    """The training stage's summary artifact."""
    final = metrics.get("final", {})
    rows = "\n".join(f"| {k} | {final[k]:.4g} |" for k in _KEYS if k in final)
    resumed = metrics.get("resumed_from")
    return (f"# {stage}\n\n{metrics['steps']} optimizer steps on {metrics['rows']:,} rows"
            f"{f' (resumed from {resumed})' if resumed else ''}; mean training loss "
            f"{metrics['train_loss']:.4f}.\n\n| last step | value |\n|---|---:|\n{rows}\n\n"
            f"Model: `{model.path}` (model card in its README.md). Loss curve: "
            f"`{loss_png}`; per-step values in the `{stage}-samples` table.\n")


# The licence of everything trained on VidProM's queries (vpo_core/data/README.md).
LICENSE = "cc-by-nc-4.0"
VIDPROM = ("[VidProM](https://huggingface.co/datasets/WenhaoWang/VidProM) (Wang & Yang, "
           "NeurIPS 2024, arXiv:2403.06098), licensed CC BY-NC 4.0")
_BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def hub_base_model(base: str) -> str | None:
    """The Hub id a model folder started from, for the card's metadata: a hub id as is;
    the converted bundled model is SmolLM2-135M-Instruct; a trained folder (an SFT model
    that DPO started from) passes on its own card's base model."""
    path = Path(base)
    if path.name == BUNDLED_NAME and path.is_dir():
        return _BUNDLED_HUB_ID
    if (path / "README.md").is_file():
        from huggingface_hub import ModelCard

        found = ModelCard.load(path / "README.md").data.base_model
        return found if isinstance(found, str) else None
    return base if _HUB_ID.match(base) and not path.exists() else None


def instruction_template() -> list[dict[str, str]]:
    """The messages the optimizer is trained on and asked with, ``{query}`` standing for
    the user's query."""
    return optimizer_messages("{query}")


def model_card(base_model: str, kind: str, training: str, evaluation: str = "",
               eval_results: list[Any] | None = None) -> ModelCard:
    """A Hub model card: licence, base model, the exact instruction, usage with
    transformers, vLLM and ``vpo serve``, how it was trained, and the evaluation when there
    is one (``eval_results`` become the card's model-index)."""
    from huggingface_hub import ModelCard, ModelCardData

    hub_base = hub_base_model(base_model)
    data = ModelCardData(
        license=LICENSE, language=["en"], library_name="transformers",
        pipeline_tag="text-generation", base_model=hub_base,
        tags=["vpo", "prompt-optimization", "text-to-video", kind],
        model_name=f"vpo-{kind}" if eval_results else None, eval_results=eval_results)
    template = json.dumps(instruction_template(), indent=2, ensure_ascii=False)
    text = f"""# VPO prompt optimizer ({kind.upper()})

Rewrites short text-to-video queries into detailed prompts that are harmless, keep the
user's intent and help the video model: the VPO method (Cheng et al., ICCV 2025,
[thu-coai/VPO](https://github.com/thu-coai/VPO)), trained by the `vpo-pipeline`
reference implementation, version {__version__}.

## Licence

CC BY-NC 4.0 (non-commercial use, attribution): the model was trained on prompts derived
from the user queries of {VIDPROM}. The base model's own licence applies as well
(base model: `{hub_base or base_model}`).

## Instruction

The model answers these messages, in its chat template, with `{{query}}` replaced by the
user's raw query (the exact text it was trained on; do not paraphrase it):

```json
{template}
```

## Usage

With transformers:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

TEMPLATE = {template}
model_id = "<this model's folder or Hub id>"
tok = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id)
query = "a cute dog on the grass"
messages = [{{**m, "content": m["content"].replace("{{query}}", query)}} for m in TEMPLATE]
ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                              return_dict=True)
out = model.generate(**ids, max_new_tokens=256, do_sample=False)
print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
```

With vLLM (same `TEMPLATE` and `messages`):

```python
from vllm import LLM, SamplingParams

llm = LLM(model=model_id)
[out] = llm.chat([messages], SamplingParams(temperature=0.0, max_tokens=256))
print(out.outputs[0].text)
```

As a server that applies the instruction itself (batched; also OpenAI-compatible at
`/v1/chat/completions`, the user message being the raw query):

```bash
vpo serve --model <this folder> --port 8000
curl -s localhost:8000/v1/optimize -H 'Content-Type: application/json' \\
     -d '{{"query": "a cute dog on the grass"}}'
```

## Training

{training.strip()}

## Evaluation

{evaluation.strip() or EVALUATION_MISSING}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


EVALUATION_MISSING = ("Not evaluated yet: run `vpo evaluate --model NAME=<this folder>`, then "
                      "`vpo export <this folder> --to DIR --eval <the evaluate run's folder>`.")
