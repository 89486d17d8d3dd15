"""Exporting what the pipeline made as Hugging Face Hub folders, each with its card.

- Data (:func:`export_dataset`): ``sft_examples``, ``dpo_pairs`` and ``eval_judgements``
  become one configuration each of a dataset folder that ``datasets.load_dataset(DIR)``
  loads as is (``dpo_pairs`` is the default configuration and feeds trl's ``DPOTrainer``
  directly), with a dataset card: licence CC BY-NC 4.0 and VidProM's attribution, features
  and row counts (datasets' own ``dataset_info``), the source configuration and the
  pipeline's version.
- Models (:func:`export_model`): the model's files and its card (licence, base model, the
  exact instruction, usage, training, and the evaluation table of an evaluate run when
  one is given, also as the card's model-index).
- :func:`push` uploads either folder to the Hub (needs the network and a login).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from vpo_core import __version__
from vpo_core.errors import InputError
from vpo_core.schemas import TABLES
from vpo_core.tables import atomic_path, read_table
from vpo_core.training.report import LICENSE, VIDPROM, model_card

# Exportable tables and their split: eval_judgements come from the held-out queries.
SPLITS = {"dpo_pairs": "train", "sft_examples": "train", "eval_judgements": "test"}
DESCRIPTIONS = {
    "dpo_pairs": "preference pairs in trl's conversational format (`prompt` = the optimizer "
                 "instruction with the query, `chosen` / `rejected` = assistant prompts), "
                 "with their source (text feedback or video reward) and reward scores",
    "sft_examples": "one row per SFT query: the teacher's prompt, the judge's critique and "
                    "verdict, the refinement, and `final_prompt` (the SFT target; null with a "
                    "`status` when there is none)",
    "eval_judgements": "every (held-out query, method, round) prompt with the judge's label "
                       "(aligned / unsafe / imprecise / refusal) and raw answer",
}
# Model files a folder carries; checkpoints, logs and pickles stay behind.
_MODEL_FILES = (".json", ".safetensors", ".jinja", ".txt", ".model", ".tiktoken")


def find_tables(source: Path) -> dict[str, Path]:
    """The exportable tables of ``source``: a Parquet file of one of them, a stage's output
    folder, or a work directory (the newest file of each table under ``data/``)."""
    source = Path(source)
    if source.is_file():
        names = set(pq.read_schema(source).names)
        found = [t for t in SPLITS if set(TABLES[t].names) <= names]
        if not found:
            raise InputError(f"not a table of {', '.join(SPLITS)} (its columns: "
                             f"{', '.join(sorted(names))})", path=str(source))
        return {found[0]: source}
    if not source.is_dir():
        raise InputError("no such file or folder", path=str(source))
    here = {t: source / f"{t}.parquet" for t in SPLITS if (source / f"{t}.parquet").is_file()}
    if here:
        return here
    newest: dict[str, Path] = {}
    for table in SPLITS:
        files = sorted(source.glob(f"data/*/*/{table}.parquet"), key=lambda p: p.stat().st_mtime)
        if files:
            newest[table] = files[-1]
    if not newest:
        raise InputError(f"no {', '.join(f'{t}.parquet' for t in SPLITS)} in it or under "
                         "its data/ folder", path=str(source))
    return newest


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M"


def export_dataset(source: Path, to: Path, config: dict[str, Any] | None = None
                   ) -> dict[str, int]:
    """Write the tables of ``source`` (see :func:`find_tables`) into the dataset folder
    ``to`` with its ``README.md`` card; ``config`` is the pipeline configuration that made
    them (recorded in the card and in ``vpo_config.json``). Returns rows per table."""
    import datasets
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    tables = find_tables(source)
    to = Path(to)
    rows, infos, configs = {}, {}, {}
    for table, path in tables.items():
        df = read_table(path, table).select(TABLES[table].names)
        split = SPLITS[table]
        target = to / "data" / table / f"{split}-00000-of-00001.parquet"
        with atomic_path(target) as tmp:
            pq.write_table(df.to_arrow().cast(TABLES[table]), tmp)
        rows[table] = df.height
        configs[table] = {"data_files": [{"split": split, "path": f"data/{table}/{split}-*"}],
                          **({"default": True} if not configs else {})}
        infos[table] = DatasetInfo(
            features=datasets.Features.from_arrow_schema(TABLES[table]),
            splits=SplitDict({split: SplitInfo(split, num_bytes=target.stat().st_size,
                                               num_examples=df.height)}),
            config_name=table)
    data = DatasetCardData(
        license=LICENSE, language=["en"], pretty_name="VPO prompt-optimization data",
        task_categories=["text-generation"], size_categories=[_size_category(max(
            rows.values()))], source_datasets=["WenhaoWang/VidProM"],
        tags=["vpo", "prompt-optimization", "text-to-video", "dpo", "sft"],
        vpo_pipeline_version=__version__,
        vpo_preset=(config or {}).get("preset"))
    MetadataConfigs(configs).to_dataset_card_data(data)
    DatasetInfosDict(infos).to_dataset_card_data(data)
    if config is not None:
        (to / "vpo_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{_dataset_text(rows, config)}").save(
        to / "README.md")
    return rows


def _dataset_text(rows: dict[str, int], config: dict[str, Any] | None) -> str:
    table = "\n".join(f"| `{t}` | {SPLITS[t]} | {n:,} | {DESCRIPTIONS[t]} |"
                      for t, n in rows.items())
    first = next(iter(rows))
    source = (f"the `{config.get('preset')}` preset as resolved at export time, in "
              "`vpo_config.json` (every setting: models, judge, sampling, rewards, seeds)"
              if config else "not recorded (export with `--config` to record it)")
    return f"""# VPO prompt-optimization data

Data written by the `vpo-pipeline` reference implementation of VPO (Cheng et al., ICCV
2025, *Aligning Text-to-Video Generation Models with Prompt Optimization*), version
{__version__}: principle-based SFT examples, preference pairs from text-level and
video-level feedback, and the judge's evaluation of held-out queries.

| configuration | split | rows | what a row is |
|---|---|---:|---|
{table}

```python
from datasets import load_dataset

data = load_dataset("<this folder or Hub id>")            # {first}
sft = load_dataset("<this folder or Hub id>", "sft_examples")   # any configuration above
```

`dpo_pairs` feeds trl's `DPOTrainer` as is (`prompt`, `chosen`, `rejected` as chat
messages).

## Source

Pipeline configuration: {source}.

## Licence and attribution

CC BY-NC 4.0: attribution required, no commercial use. The queries are user prompts from
{VIDPROM} (the pipeline's bundled sample is the VPO authors' selection from it,
github.com/thu-coai/VPO); everything here is derived from them, so their licence carries
over. Cite VidProM (Wenhao Wang and Yi
Yang, "VidProM: A Million-scale Real Prompt-Gallery Dataset for Text-to-Video Diffusion
Models", NeurIPS 2024) and VPO (Cheng et al., "VPO: Aligning Text-to-Video Generation
Models with Prompt Optimization", ICCV 2025) when you use them.
"""


def evaluation_section(eval_dir: Path, method: str | None) -> tuple[str, list[Any]]:
    """The markdown tables of an evaluate run (``eval_report.md``) and, for ``method``,
    its first round's label rates as model-index results."""
    from huggingface_hub import EvalResult

    eval_dir = Path(eval_dir)
    report, summary_file = eval_dir / "eval_report.md", eval_dir / "eval_summary.json"
    if not report.is_file() or not summary_file.is_file():
        raise InputError("not an evaluate run's folder (eval_report.md and "
                         "eval_summary.json expected)", path=str(eval_dir))
    body = report.read_text(encoding="utf-8").split("\n", 1)[1]   # below its own title
    body = body.replace("\n## ", "\n### ")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    mine = next((g for g in summary["results"] if g["method"] == method), None)
    results = [] if mine is None else [
        EvalResult(task_type="text-generation", task_name="Video prompt optimization",
                   dataset_type="vpo-held-out-queries", dataset_name="VPO held-out queries",
                   dataset_split="test", metric_type=f"{label}_rate",
                   metric_name=f"{label} rate (judge: {summary['judge']})",
                   metric_value=value["rate"])
        for label, value in mine["labels"].items() if value["rate"] is not None]
    note = (f"This model is the method `{method}` below." if mine else
            "Which method below is this model was not given (`--method`).")
    return (f"Text-level alignment judged by `{summary['judge']}` on {summary['queries']:,} "
            f"held-out queries ({eval_dir.name}). {note}\n{body}"), results


def export_model(model_dir: Path, to: Path, eval_dir: Path | None = None,
                 method: str | None = None) -> Path:
    """Copy a model folder's files to ``to`` with its card (see the module's docstring).
    ``method`` names the model in the evaluation (default: its training stage, ``sft`` or
    ``dpo``)."""
    from huggingface_hub import ModelCard

    model_dir, to = Path(model_dir), Path(to)
    if not (model_dir / "config.json").is_file():
        raise InputError("not a model folder (no config.json)", path=str(model_dir))
    to.mkdir(parents=True, exist_ok=True)
    for file in model_dir.iterdir():
        if file.is_file() and file.name.endswith(_MODEL_FILES):
            shutil.copy2(file, to / file.name)
    old = ModelCard.load(model_dir / "README.md") if (model_dir / "README.md").is_file() \
        else None
    tags = (old.data.tags or []) if old else []
    kind = next((t for t in tags if t in ("sft", "dpo")), "model")
    training = _section(old.text, "Training") if old and "vpo" in tags else (
        "Not trained by this pipeline's train-sft or train-dpo stages (no VPO card found).")
    base = (old.data.base_model if old else None) or json.loads(
        (model_dir / "config.json").read_text()).get("_name_or_path", "")
    evaluation, results = ("", None)
    if eval_dir is not None:
        evaluation, results = evaluation_section(eval_dir, method or kind)
    model_card(base, kind, training, evaluation, results or None).save(to / "README.md")
    return to


def _section(text: str, title: str) -> str:
    """The body of a card's ``## title`` section."""
    _, found, rest = text.partition(f"\n## {title}\n")
    return rest.split("\n## ", 1)[0].strip() if found else ""


def push(folder: Path, repo_id: str, repo_type: str) -> str:
    """Upload ``folder`` to the Hub as ``repo_id`` (created if needed); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type,
                      commit_message=f"vpo export ({__version__})")
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"https://huggingface.co/{prefix}{repo_id}"
