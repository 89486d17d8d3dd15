"""Reading user queries from wherever they are: the bundled sample, VidProM's CSV or
Parquet, JSON / JSONL / TXT files (one, a folder of them, or a glob pattern, read as one
input), or a Hugging Face dataset.

Every input row becomes a row of the ``raw`` table, readable or not: a null, a number
or undecodable bytes get a ``read_error`` reason and are rejected later with it, so
nothing vanishes. A file that cannot be read at all (unknown format, no prompt column)
fails at once with an :class:`~vpo_core.errors.InputError` naming the file.
"""

from __future__ import annotations

import glob
import json
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.errors import InputError, TransientError
from vpo_core.schemas import DETOXIFY_COLUMNS, RAW

BUNDLED = "bundled"
BUNDLED_FILE = "vidprom_vpo_sample.json"
HF_PREFIX = "hf:"
FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
           ".json": "json", ".jsonl": "jsonl", ".txt": "txt"}
_REPLACEMENT = "\ufffd"


def bundled_path() -> Path:
    """The bundled sample: 5,000 real VidProM queries as curated by the VPO authors."""
    return Path(str(resources.files("vpo_core") / "data" / BUNDLED_FILE))


def bundled_queries() -> list[str]:
    return json.loads(bundled_path().read_text(encoding="utf-8"))


def input_files(spec: str) -> list[Path]:
    """The files behind an input spec, read as one input: 'bundled', a file, a folder (its
    query files, in name order: where new query dumps land) or a glob pattern
    ('dumps/*.csv', 'dumps/**/*.jsonl'). hf: inputs are fetched first."""
    if spec == BUNDLED:
        return [bundled_path()]
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
        if not files:
            raise InputError(f"the folder holds no query file ({', '.join(sorted(FORMATS))})",
                             path=str(path))
    elif glob.has_magic(str(path)):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                       if Path(p).is_file())
        if not files:
            raise InputError("no file matches the pattern", path=str(path))
    else:
        raise InputError("input file does not exist", path=str(path))
    return [p.resolve() for p in files]


def fetch_hf_dataset(spec: str, split: str, data_files: str | None, cache_dir: Path,
                     dest: Path) -> Path:
    """Load ``hf:<dataset id>`` with the datasets library and save it as Parquet."""
    import datasets  # imported here: slow, and only this input needs it

    name = spec.removeprefix(HF_PREFIX)
    try:
        ds = datasets.load_dataset(name, split=split, data_files=data_files,
                                   cache_dir=str(cache_dir))
    except Exception as exc:
        if "offline" in f"{type(exc).__name__} {exc}".lower():
            raise InputError(f"cannot load Hugging Face dataset {name!r}: offline mode is on "
                             "(HF_HUB_OFFLINE=1). Load it once online, or pass a local "
                             "CSV/Parquet file with --input.", path=spec) from exc
        if isinstance(exc, (ConnectionError, TimeoutError)):
            raise TransientError(f"Hugging Face dataset {name!r}: {exc}") from exc
        raise InputError(f"cannot load Hugging Face dataset {name!r} (split {split!r}): "
                         f"{type(exc).__name__}: {exc}", path=spec) from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(dest))
    return dest


def _from_values(values: list[Any], prompt_column: str, path: Path) -> pl.DataFrame:
    """Rows from decoded JSON values: strings, or objects with the prompt field (a list
    mostly of objects is a list of records). A value of the wrong kind is a bad row."""
    objects = [v for v in values if isinstance(v, dict)]
    of_objects = len(objects) > sum(isinstance(v, str) for v in values)
    if of_objects and not any(prompt_column in o for o in objects):
        raise InputError(f"no object has the prompt field (fields seen: "
                         f"{sorted(objects[0])[:12]})", path=str(path), field=prompt_column)
    prompts: list[str | None] = []
    errors: list[str | None] = []
    ids: list[str | None] = []
    for value in values:
        is_record = isinstance(value, dict) and (of_objects or prompt_column in value)
        ids.append(str(value["uuid"]) if is_record and value.get("uuid") is not None else None)
        if is_record:
            value = value.get(prompt_column)
        if value is None:
            prompts.append(None)
            errors.append("null_prompt")
        elif isinstance(value, str):
            prompts.append(value)
            errors.append("invalid_utf8" if _REPLACEMENT in value else None)
        else:
            prompts.append(json.dumps(value, ensure_ascii=False)[:10_000])
            errors.append("not_a_string")
    return pl.DataFrame({"prompt": prompts, "read_error": errors, "source_id": ids},
                        schema={"prompt": pl.String, "read_error": pl.String,
                                "source_id": pl.String})


def _read_json(path: Path, prompt_column: str, lines: bool) -> pl.DataFrame:
    text = path.read_bytes().decode("utf-8", errors="replace")
    if not lines:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON ({exc})", path=str(path)) from exc
        if not isinstance(values, list):
            raise InputError(f"expected a JSON list of queries or objects, got a "
                             f"{type(values).__name__}", path=str(path))
        return _from_values(values, prompt_column, path)
    values, bad, rows = [], [], []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        rows.append(i)
        try:
            values.append(json.loads(line))
            bad.append(False)
        except json.JSONDecodeError:
            values.append(line)
            bad.append(True)
    df = _from_values(values, prompt_column, path)
    return df.with_columns(
        pl.when(pl.Series(bad, dtype=pl.Boolean)).then(pl.lit("invalid_json"))
        .otherwise("read_error").alias("read_error"),
        pl.Series("source_row", rows, dtype=pl.Int64))


def _read_txt(path: Path) -> pl.DataFrame:
    """One query per line; blank lines are skipped, ``source_row`` is the 0-based line."""
    prompts, errors, rows = [], [], []
    for i, raw in enumerate(path.read_bytes().splitlines()):
        if not raw.strip():
            continue
        rows.append(i)
        try:
            prompts.append(raw.decode("utf-8"))
            errors.append(None)
        except UnicodeDecodeError:
            prompts.append(raw.decode("utf-8", errors="replace"))
            errors.append("invalid_utf8")
    return pl.DataFrame({"prompt": prompts, "read_error": errors, "source_row": rows},
                        schema={"prompt": pl.String, "read_error": pl.String,
                                "source_row": pl.Int64})


def _read_table(path: Path, fmt: str, prompt_column: str) -> pl.DataFrame:
    try:
        if fmt == "csv":
            df = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy",
                             separator="\t" if path.suffix == ".tsv" else ",")
        else:
            df = pl.read_parquet(path)
    except Exception as exc:
        raise InputError(f"not a readable {fmt.upper()} file ({type(exc).__name__}: {exc})",
                         path=str(path)) from exc
    if prompt_column not in df.columns:
        raise InputError(f"missing the prompt column {prompt_column!r}; columns found: "
                         f"{df.columns[:20]}", path=str(path), field=prompt_column)
    prompt = df.get_column(prompt_column)
    if prompt.dtype == pl.Binary:
        prompt = pl.Series([None if b is None else b.decode("utf-8", errors="replace")
                            for b in prompt], dtype=pl.String)
    text = prompt.dtype == pl.String
    columns = [
        prompt.cast(pl.String, strict=False).alias("prompt"),
        pl.when(prompt.is_null()).then(pl.lit("null_prompt"))
        .when(pl.lit(not text)).then(pl.lit("not_a_string"))
        .when(prompt.cast(pl.String, strict=False).str.contains(_REPLACEMENT, literal=True))
        .then(pl.lit("invalid_utf8")).otherwise(pl.lit(None, pl.String)).alias("read_error"),
        *[pl.col(c).cast(pl.Float64, strict=False) for c in DETOXIFY_COLUMNS if c in df.columns],
    ]
    if "uuid" in df.columns:
        columns.append(pl.col("uuid").cast(pl.String).alias("source_id"))
    if "time" in df.columns:
        columns.append(pl.col("time").cast(pl.String))
    return df.select(columns)


def read_raw_files(paths: list[Path], prompt_column: str = "prompt"
                   ) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Several files as one ``raw`` table, in the given order; ``source_row`` counts on
    across the files. Also each file's name, rows and first ``source_row``."""
    frames, files, offset = [], [], 0
    for path in paths:
        df = read_raw(path, prompt_column)
        frames.append(df.with_columns(pl.col("source_row") + offset))
        files.append({"file": path.name, "rows": df.height, "first_row": offset})
        offset += int(df["source_row"].max()) + 1 if df.height else 0
    return pl.concat(frames, how="vertical"), files


def read_raw(path: Path, prompt_column: str = "prompt") -> pl.DataFrame:
    """Every row of an input file as a ``raw`` table (see vpo_core.schemas.RAW)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"unsupported format {path.suffix or '(no extension)'!r}: expected "
                         "CSV, TSV, Parquet, JSON, JSONL or TXT", path=str(path))
    if fmt in {"csv", "parquet"}:
        df = _read_table(path, fmt, prompt_column)
    elif fmt == "txt":
        df = _read_txt(path)
    else:
        df = _read_json(path, prompt_column, lines=fmt == "jsonl")
    if "source_row" not in df.columns:
        df = df.with_row_index("source_row")
    missing = [pl.lit(None, pl.Float64 if n in DETOXIFY_COLUMNS else pl.String).alias(n)
               for n in RAW.names if n not in df.columns]
    return df.with_columns(missing).with_columns(pl.col("source_row").cast(pl.Int64)) \
        .select(RAW.names)
