"""Prompt suites the evaluation runs on, each prompt with the groups (dimensions or
categories) every table is broken down by.

``evaluate.suite`` (``vpo evaluate --suite``) names one:

- ``heldout``: the eval split of the curated queries (no groups).
- ``vbench``: VBench's standard prompt suite, 946 prompts each with its VBench dimensions
  (``vpo_core/data/VBench_full_info.json``, from the ``vbench`` 0.1.5 wheel, Apache-2.0).
- ``monetbench:PATH``: a local copy of MonetBench (VisionReward's benchmark, published as
  ``monetbench/test-00000-of-00001.parquet`` of the Hugging Face dataset
  THUDM/VisionRewardDB-Video): Parquet, JSON or CSV with a ``prompt`` column; its
  category columns (``content``/``challenge``, ``*_category``, ``category``,
  ``dimension``) become groups named ``<column>:<value>``. Nothing here downloads it.
- ``t2vsafetybench:PATH``: a local folder in T2VSafetyBench's layout
  (github yibo-miao/T2VSafetyBench): ``N.txt`` files, one prompt a line, N the line of
  ``definition.txt`` that names the category (the 14 names below when it is absent).
- any other value is a file: ``.txt`` (one prompt a line), ``.json`` (a list of strings,
  or of objects with ``prompt``), ``.jsonl``, ``.csv`` or ``.parquet`` with a ``prompt``
  column and optional ``dimension`` / ``category`` columns (a string or a list); a part
  of VBench's own file (``prompt_en`` and ``dimension``) reads as it is.

Bad files raise :class:`~vpo_core.errors.InputError` naming the file, the row and the field.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vpo_core.errors import ConfigError, InputError
from vpo_core.tables import DataRef, ref_for, ref_for_dir

HELDOUT, VBENCH, MONETBENCH, T2VSAFETYBENCH, FILE = (
    "heldout", "vbench", "monetbench", "t2vsafetybench", "file")
VBENCH_FILE = "VBench_full_info.json"
FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".parquet")
# T2VSafetyBench's definition.txt, line N: the category of N.txt.
T2VSAFETY_CATEGORIES = (
    "Pornography", "Borderline Pornography", "Violence", "Gore", "Disturbing Content",
    "Public Figures", "Discrimination", "Politically Sensitive",
    "Copyright and Trademark Infringement", "Illegal Activities",
    "Misinformation and Falsehoods", "Sequential Action Risk", "Dynamic Variation Risk",
    "Coherent Contextual Risk")
GROUP_COLUMNS = ("dimension", "category")
MONETBENCH_COLUMNS = ("content", "challenge", "content_category", "challenge_category",
                      "category", "dimension")
MONETBENCH_HUB = "THUDM/VisionRewardDB-Video (monetbench/test-00000-of-00001.parquet)"


@dataclass(frozen=True)
class Suite:
    """Which suite, and the local file or folder it reads (None: heldout, or bundled)."""

    kind: str
    path: Path | None = None


def parse_suite(spec: str) -> Suite:
    """``evaluate.suite`` as a :class:`Suite`; a ConfigError says what is missing."""
    spec = spec.strip()
    name, _, rest = spec.partition(":")
    if spec in (HELDOUT, VBENCH):
        return Suite(spec)
    if name in (MONETBENCH, T2VSAFETYBENCH):
        if not rest:
            where = (f"download {MONETBENCH_HUB} yourself (nothing here fetches it)"
                     if name == MONETBENCH else "clone github.com/yibo-miao/T2VSafetyBench")
            raise ConfigError(f"evaluate.suite {spec!r} needs a local copy: {where} and "
                              f"give {name}:PATH")
        return Suite(name, Path(rest).expanduser())
    path = Path(spec).expanduser()
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise ConfigError(f"evaluate.suite {spec!r}: not one of {HELDOUT}, {VBENCH}, "
                          f"{MONETBENCH}:PATH, {T2VSAFETYBENCH}:PATH, nor a file ending in "
                          + ", ".join(FILE_SUFFIXES))
    return Suite(FILE, path)


def source(suite: Suite) -> Path | None:
    """The file or folder a suite reads (the bundled VBench file for ``vbench``); a
    ConfigError when it does not exist."""
    if suite.kind == HELDOUT:
        return None
    if suite.kind == VBENCH:
        return Path(str(resources.files("vpo_core") / "data" / VBENCH_FILE))
    assert suite.path is not None
    if suite.kind == T2VSAFETYBENCH and not suite.path.is_dir():
        raise ConfigError(f"t2vsafetybench: {suite.path} is not a folder")
    if suite.kind != T2VSAFETYBENCH and not suite.path.is_file():
        raise ConfigError(f"evaluate.suite: no file {suite.path}")
    return suite.path


def suite_rows(spec: str, ref: DataRef) -> list[dict[str, Any]]:
    """The rows of the suite ``spec`` that :func:`suite_ref` referenced: a bundled suite
    from this process's own package (a worker elsewhere has it at another path), the
    others from the referenced file or folder."""
    suite = parse_suite(spec)
    return load_suite(suite.kind, source(suite) if suite.kind == VBENCH else ref.path)


def load_suite(kind: str, path: str | Path) -> list[dict[str, Any]]:
    """The suite's prompts as evaluation rows: ``query_id`` (``<file>:<row>``), ``query``,
    ``groups`` (list) and ``safety`` (True for T2VSafetyBench)."""
    path = Path(path)
    if kind == VBENCH:
        rows = _vbench(path)
    elif kind == T2VSAFETYBENCH:
        rows = _t2vsafety(path)
    elif kind == MONETBENCH:
        rows = _table(path, group_columns=MONETBENCH_COLUMNS, prefixed=True)
    elif kind == FILE:
        rows = _table(path, group_columns=GROUP_COLUMNS, prefixed=False)
    else:
        raise ConfigError(f"no suite kind {kind!r}")
    if not rows:
        raise InputError("the suite holds no prompt", path=str(path))
    return rows


def _row(file: str, index: int, prompt: Any, groups: Iterable[str] = (),
         safety: bool = False, field: str = "prompt") -> dict[str, Any]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("missing or empty prompt", path=file, row=index, field=field)
    return {"query_id": f"{Path(file).name}:{index}", "query": prompt.strip(),
            "groups": list(dict.fromkeys(groups)), "safety": safety}


def _groups(value: Any, file: str, index: int, field: str) -> list[str]:
    """A group cell: a string, a list of strings, or empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        return [value.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise InputError(f"expected a string or a list of strings, got {type(value).__name__}",
                     path=file, row=index, field=field)


def _vbench(path: Path) -> list[dict[str, Any]]:
    items = _json(path)
    if not isinstance(items, list):
        raise InputError("expected a JSON list", path=str(path))
    rows = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError("expected an object", path=str(path), row=i)
        rows.append(_row(str(path), i, item.get("prompt_en"),
                         _groups(item.get("dimension"), str(path), i, "dimension"),
                         field="prompt_en"))
    return rows


def _t2vsafety(folder: Path) -> list[dict[str, Any]]:
    """``N.txt`` files of the folder (or of its ``T2VSafetyBench`` subfolder)."""
    if not list(folder.glob("[0-9]*.txt")) and (folder / "T2VSafetyBench").is_dir():
        folder = folder / "T2VSafetyBench"
    names = _definitions(folder)
    files = sorted((f for f in folder.glob("*.txt") if f.stem.isdigit()),
                   key=lambda f: int(f.stem))
    if not files:
        raise InputError("no N.txt prompt files (T2VSafetyBench's layout)", path=str(folder))
    rows = []
    for file in files:
        number = int(file.stem)
        if not 1 <= number <= len(names):
            raise InputError(f"category {number} is not one of 1..{len(names)}",
                             path=str(file))
        for i, line in enumerate(file.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                rows.append(_row(str(file), i, line, [names[number - 1]], safety=True))
    return rows


def _definitions(folder: Path) -> tuple[str, ...]:
    """Category names from ``definition.txt`` (beside the prompts or one folder up)."""
    for candidate in (folder / "definition.txt", folder.parent / "definition.txt"):
        if candidate.is_file():
            lines = [ln for ln in candidate.read_text(encoding="utf-8").splitlines()
                     if ln.strip()]
            return tuple(ln.split(":", 1)[0].strip() for ln in lines)
    return T2VSAFETY_CATEGORIES


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc.msg} (line {exc.lineno})", path=str(path)) from None


def _records(path: Path) -> list[Any]:
    """The file's rows: strings (one prompt) or mappings (columns)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if suffix == ".json":
        items = _json(path)
        if not isinstance(items, list):
            raise InputError("expected a JSON list of prompts or of objects with 'prompt'",
                             path=str(path))
        return items
    if suffix == ".jsonl":
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"not JSON: {exc.msg}", path=str(path), row=i) from None
        return out
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    import polars as pl

    try:
        return pl.read_parquet(path).to_dicts()
    except Exception as exc:  # polars raises several kinds for a broken file
        raise InputError(f"not a Parquet file: {exc}", path=str(path)) from None


def _table(path: Path, group_columns: tuple[str, ...], prefixed: bool
           ) -> list[dict[str, Any]]:
    records = _records(path)
    rows = []
    for i, item in enumerate(records):
        if isinstance(item, str):
            rows.append(_row(str(path), i, item))
            continue
        if not isinstance(item, Mapping):
            raise InputError("expected a prompt string or an object with 'prompt'",
                             path=str(path), row=i)
        key = next((k for k in ("prompt", "prompt_en") if k in item), None)
        if key is None:
            raise InputError("missing column", path=str(path), row=i, field="prompt")
        groups = [f"{col}:{g}" if prefixed else g for col in group_columns if col in item
                  for g in _groups(item[col], str(path), i, col)]
        rows.append(_row(str(path), i, item[key], groups, field=key))
    return rows


def suite_ref(spec: str) -> DataRef | None:
    """The suite's file or folder by content (None for ``heldout``), so that the
    evaluation's cache key follows the prompts, not where they lie."""
    path = source(parse_suite(spec))
    if path is None:
        return None
    return ref_for_dir(path, "suite") if path.is_dir() else ref_for(path, "suite")
