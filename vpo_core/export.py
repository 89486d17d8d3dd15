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
- :func:`upload_plan` lists what a push sends (the files the export wrote, nothing else
  in the folder) and the repository's visibility (private unless asked otherwise);
  :func:`push` carries it out (needs the network and a login).

Nothing in an export says where it was made: ``vpo_config.json`` keeps only the settings
that decide the data (no endpoint, key name, call store, work directory or placement),
local paths in cards and model files become file names, and the data's ``error`` texts
lose their URLs and paths.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from vpo_core import __version__
from vpo_core.errors import InputError
from vpo_core.schemas import TABLES
from vpo_core.tables import atomic_path, read_table
from vpo_core.training.report import LICENSE, VIDPROM, hub_base_model, model_card

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
VIDPROM_ID = "WenhaoWang/VidProM"

# Where things ran, not what made the data: left out of vpo_config.json (by key name; a
# value that is a URL or a network address is left out wherever it is).
_DEPLOYMENT_KEYS = re.compile(r"^(work_dir|placement|preflight|api_base|"
                              r"call_store.*|.*_env|.*_secret|.*_python)$")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"`)>\]]+", re.I)
_ADDRESS = re.compile(r"\b(?:localhost|\d{1,3}(?:\.\d{1,3}){3})(?::\d+)?\b")
_ABS_PATH = re.compile(r"(?<![\w.:/])(?:~|/)[\w.@+-]*(?:/[\w.@+-]+)+/?")


@dataclass(frozen=True)
class Export:
    """What an export wrote: ``files`` relative to ``folder`` (``/``-separated), the only
    ones a push uploads."""

    kind: str            # "dataset" or "model"
    folder: Path
    files: tuple[str, ...]
    rows: dict[str, int]


@dataclass(frozen=True)
class UploadPlan:
    """One push: the repository, its visibility and the files, before any network call."""

    repo_id: str
    repo_type: str
    private: bool
    files: tuple[str, ...]


def upload_plan(export: Export, repo_id: str, public: bool = False) -> UploadPlan:
    """A private repository unless ``public``; exactly the files the export wrote."""
    return UploadPlan(repo_id, export.kind, not public, export.files)


def redact(text: str) -> str:
    """``text`` without URLs, network addresses or absolute paths (a path keeps its file
    name): for texts that may quote where a run happened (errors, cards)."""
    text = _URL.sub("<endpoint>", text)
    text = _ABS_PATH.sub(lambda m: Path(m[0].rstrip("/")).name, text)
    return _ADDRESS.sub("<address>", text)


def reproducible_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The settings of ``config`` that decide the data, and the dotted keys left out
    (endpoints, key names, call stores, work directory, placement, local environments,
    any URL or network address). A local file setting keeps its file name."""
    left_out: list[str] = []

    def keep(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            kept = {}
            for key, item in value.items():
                dotted = f"{where}.{key}" if where else key
                if _DEPLOYMENT_KEYS.match(key):
                    left_out.append(dotted)
                    continue
                item = keep(item, dotted)
                if item is not _DROP:
                    kept[key] = item
            return kept
        if isinstance(value, list):
            return [v for v in (keep(v, where) for v in value) if v is not _DROP]
        if isinstance(value, str):
            if _URL.search(value) or _ADDRESS.search(value):
                left_out.append(where)
                return _DROP
            if _ABS_PATH.fullmatch(value.strip()):
                return Path(value.strip().rstrip("/")).name
        return value

    return keep(config, ""), left_out


_DROP = object()


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


def export_dataset(source: Path, to: Path, config: dict[str, Any] | None = None) -> Export:
    """Write the tables of ``source`` (see :func:`find_tables`) into the dataset folder
    ``to`` with its ``README.md`` card; ``config`` is the pipeline configuration that made
    them (what of it decides the data goes in the card and in ``vpo_config.json``)."""
    import datasets
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    tables = find_tables(source)
    to = Path(to)
    rows, infos, configs, files = {}, {}, {}, []
    for table, path in tables.items():
        df = read_table(path, table).select(TABLES[table].names)
        if "error" in df.columns:   # exception texts may quote an endpoint or a path
            df = df.with_columns(pl.col("error").map_elements(redact, return_dtype=pl.String))
        split = SPLITS[table]
        target = to / "data" / table / f"{split}-00000-of-00001.parquet"
        with atomic_path(target) as tmp:
            pq.write_table(df.to_arrow().cast(TABLES[table]), tmp)
        rows[table] = df.height
        files.append(target.relative_to(to).as_posix())
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
            rows.values()))], source_datasets=[VIDPROM_ID],
        tags=["vpo", "prompt-optimization", "text-to-video", "dpo", "sft"],
        vpo_pipeline_version=__version__,
        vpo_preset=(config or {}).get("preset"))
    MetadataConfigs(configs).to_dataset_card_data(data)
    DatasetInfosDict(infos).to_dataset_card_data(data)
    if config is not None:
        kept, left_out = reproducible_config(config)
        kept["vpo_export_left_out"] = sorted(left_out)
        (to / "vpo_config.json").write_text(json.dumps(kept, indent=2, sort_keys=True))
        files.append("vpo_config.json")
    DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{_dataset_text(rows, config)}").save(
        to / "README.md")
    return Export("dataset", to, (*files, "README.md"), rows)


def _dataset_text(rows: dict[str, int], config: dict[str, Any] | None) -> str:
    table = "\n".join(f"| `{t}` | {SPLITS[t]} | {n:,} | {DESCRIPTIONS[t]} |"
                      for t, n in rows.items())
    first = next(iter(rows))
    source = (f"the `{config.get('preset')}` preset as resolved at export time, in "
              "`vpo_config.json` (the settings that decide the data: models, judge, "
              "sampling, rewards, seeds; endpoints, keys, stores, paths and placement are "
              "left out and listed under `vpo_export_left_out`)"
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


# Licences of base models the presets use, for a card written offline (a base model found
# in the local Hub cache with its own card is read from it instead). A licence outside
# PERMISSIVE makes the card's licence `other`, naming both.
BASE_LICENCES = {
    "meta-llama/Meta-Llama-3-": ("llama3", "https://llama.meta.com/llama3/license/"),
    "meta-llama/Llama-3.1-": ("llama3.1", "https://llama.meta.com/llama3_1/license/"),
    "meta-llama/Meta-Llama-3.1-": ("llama3.1", "https://llama.meta.com/llama3_1/license/"),
    "meta-llama/Llama-3.2-": ("llama3.2", "https://llama.meta.com/llama3_2/license/"),
    "meta-llama/Llama-3.3-": ("llama3.3", "https://llama.meta.com/llama3_3/license/"),
    "HuggingFaceTB/SmolLM2-": ("apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0"),
}
PERMISSIVE = {"apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc-by-4.0"}


def base_licence(base: str | None) -> tuple[str, str | None] | None:
    """The base model's licence id and link: from its card in the local Hub cache, else
    from :data:`BASE_LICENCES`; None when neither knows it."""
    if not base:
        return None
    from huggingface_hub import ModelCard, try_to_load_from_cache

    cached = try_to_load_from_cache(base, "README.md")
    if isinstance(cached, str):
        data = ModelCard.load(cached).data
        if data.license:
            return data.license, data.license_link
    return next((v for prefix, v in BASE_LICENCES.items() if base.startswith(prefix)), None)


def _licence_text(base: str, licence: tuple[str, str | None] | None) -> str:
    if licence is None:
        own = (f"The base model `{base}`'s own licence applies as well (not found offline: "
               "read its card before you use or share this model).")
    else:
        link = f" ({licence[1]})" if licence[1] else ""
        own = f"The base model `{base}` is licensed `{licence[0]}`{link}; its terms apply too."
        if licence[0].startswith("llama"):
            own += (" Built with Meta Llama 3: a model derived from it carries Meta's "
                    "licence and acceptable-use policy, and its name starts with \"Llama\".")
    return (f"- The data: CC BY-NC 4.0 (non-commercial use, attribution): the model was "
            f"trained on prompts derived from the user queries of {VIDPROM}.\n- {own}")


def export_model(model_dir: Path, to: Path, eval_dir: Path | None = None,
                 method: str | None = None, datasets: list[str] | None = None) -> Export:
    """Copy a model folder's files to ``to`` with its card (see the module's docstring).
    ``method`` names the model in the evaluation (default: its training stage, ``sft`` or
    ``dpo``); ``datasets`` are Hub ids of the data it was trained on (VidProM always)."""
    from huggingface_hub import ModelCard

    model_dir, to = Path(model_dir), Path(to)
    if not (model_dir / "config.json").is_file():
        raise InputError("not a model folder (no config.json)", path=str(model_dir))
    to.mkdir(parents=True, exist_ok=True)
    files = []
    for file in sorted(model_dir.iterdir()):
        if file.is_file() and file.name.endswith(_MODEL_FILES):
            if file.suffix == ".json":      # transformers records where it loaded from
                data = json.loads(file.read_text(encoding="utf-8"))
                (to / file.name).write_text(json.dumps(_without_paths(data), indent=2) + "\n",
                                            encoding="utf-8")
            else:
                shutil.copy2(file, to / file.name)
            files.append(file.name)
    old = ModelCard.load(model_dir / "README.md") if (model_dir / "README.md").is_file() \
        else None
    tags = (old.data.tags or []) if old else []
    kind = next((t for t in tags if t in ("sft", "dpo")), "model")
    training = _section(old.text, "Training") if old and "vpo" in tags else (
        "Not trained by this pipeline's train-sft or train-dpo stages (no VPO card found).")
    base = (old.data.base_model if old else None) or json.loads(
        (model_dir / "config.json").read_text()).get("_name_or_path", "")
    hub_base = hub_base_model(base)
    shown = hub_base or Path(base).name
    evaluation, results = ("", None)
    if eval_dir is not None:
        evaluation, results = evaluation_section(eval_dir, method or kind)
    card = model_card(hub_base or shown, kind, redact(training), redact(evaluation),
                      results or None)
    licence = base_licence(hub_base)
    card.data.datasets = list(dict.fromkeys([VIDPROM_ID, *(datasets or [])]))
    if licence and licence[0] not in PERMISSIVE:
        card.data.license = "other"
        card.data.license_name = f"{licence[0]}-and-{LICENSE}"
        card.data.license_link = licence[1]
    card.data.base_model_license = licence[0] if licence else "unknown"
    card = ModelCard(f"---\n{card.data.to_yaml()}\n---\n\n"
                     + _replace_section(card.text, "Licence", _licence_text(shown, licence)))
    card.save(to / "README.md")
    return Export("model", to, (*files, "README.md"), {})


def _without_paths(value: Any) -> Any:
    """A model file's JSON without ``_name_or_path`` / ``name_or_path`` and with any other
    absolute path reduced to its file name."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()
                if k not in ("_name_or_path", "name_or_path")}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, str) and _ABS_PATH.fullmatch(value):
        return Path(value.rstrip("/")).name
    return value


def _replace_section(text: str, title: str, body: str) -> str:
    """``text`` with its ``## title`` section's body replaced."""
    head, found, rest = text.partition(f"\n## {title}\n")
    if not found:
        return text
    tail = rest.split("\n## ", 1)
    return f"{head}{found}\n{body}\n" + (f"\n## {tail[1]}" if len(tail) > 1 else "")


def _section(text: str, title: str) -> str:
    """The body of a card's ``## title`` section."""
    _, found, rest = text.partition(f"\n## {title}\n")
    return rest.split("\n## ", 1)[0].strip() if found else ""


def push(export: Export, plan: UploadPlan) -> str:
    """Upload the plan's files of ``export`` in one commit to the Hub repository (created
    with the plan's visibility if needed); returns its URL. An existing public repository
    is refused unless the plan is public."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=plan.private,
                    exist_ok=True)
    if plan.private and not api.repo_info(plan.repo_id, repo_type=plan.repo_type).private:
        raise InputError(f"the Hub repository {plan.repo_id} exists and is public; pass "
                         "--public to push to it, or choose another name")
    api.create_commit(plan.repo_id, [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(export.folder / name))
        for name in plan.files], repo_type=plan.repo_type,
        commit_message=f"vpo export ({__version__})")
    prefix = "datasets/" if plan.repo_type == "dataset" else ""
    return f"https://huggingface.co/{prefix}{plan.repo_id}"
