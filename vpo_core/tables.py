"""Reading and writing the pipeline's Parquet tables, and the references tasks pass around.

Tasks never pass DataFrames to each other: they pass a :class:`DataRef` (location,
content hash, row count). Cache keys use the content hash, never the location. A file
inside the active work directory is referenced by its path *relative* to it, so moving
the work directory, or mounting it at another path on a worker, changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, model_validator

from vpo_core.schemas import TABLES
from vpo_core.workdir import active_root

_CHUNK = 1 << 20
MANIFEST = ".vpo-manifest.json"


def to_loc(path: str | Path) -> str:
    """How a reference stores a path: relative to the active work directory when inside
    it, else absolute."""
    path = Path(path).resolve()
    root = active_root()
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return str(path)


def from_loc(loc: str) -> Path:
    """The file a stored location names in this process."""
    path = Path(loc)
    return path if path.is_absolute() else (active_root() or Path.cwd()) / path


class DataRef(BaseModel):
    """A file (or folder) produced or consumed by a stage, identified by its content."""

    model_config = ConfigDict(frozen=True)

    loc: str
    sha256: str
    rows: int | None = None
    table: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, data: Any) -> Any:
        """Accept ``path=`` (any path on this machine) in place of ``loc``."""
        if isinstance(data, dict) and "path" in data and "loc" not in data:
            data = {k: v for k, v in data.items() if k != "path"} | {
                "loc": to_loc(data["path"])}
        return data

    @property
    def path(self) -> str:
        """The absolute path in this process."""
        return str(from_loc(self.loc))

    def is_valid(self) -> bool:
        """True while the file (or folder) still exists with the content this reference
        was made for."""
        path = from_loc(self.loc)
        if path.is_dir():
            return dir_sha256(path) == self.sha256
        return path.is_file() and file_sha256(path) == self.sha256


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _listing(root: Path) -> dict[str, list[int]]:
    """Size and modification time of every file of a folder (the manifest aside)."""
    out = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        st = file.stat()
        out[file.relative_to(root).as_posix()] = [st.st_size, st.st_mtime_ns]
    return out


def dir_sha256(path: str | Path) -> str:
    """SHA-256 over a folder's files (relative names and contents), e.g. a saved model.

    A manifest written beside the files (``.vpo-manifest.json``: each file's size and
    modification time, and the digest) answers later checks without reading gigabytes
    again; any file added, removed, resized or touched since makes it hash afresh.
    """
    root = Path(path)
    listing = _listing(root)
    manifest = root / MANIFEST
    try:
        known = json.loads(manifest.read_text())
        if known.get("files") == listing:
            return known["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = hashlib.sha256()
    for name in listing:
        digest.update(name.encode() + b"\0")
        digest.update(file_sha256(root / name).encode())
    value = digest.hexdigest()
    try:
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps({"sha256": value, "files": listing}))
    except OSError:  # a read-only folder (a user's model): hash it every time
        pass
    return value


def ref_for_dir(path: str | Path, table: str = "model") -> DataRef:
    """Reference a folder (a trained model) by the hash of its files."""
    return DataRef(path=path, sha256=dir_sha256(path), table=table)


def ref_for(path: str | Path, table: str | None = None, rows: int | None = None) -> DataRef:
    """Reference an existing file (an input given by the user, say)."""
    return DataRef(path=path, sha256=file_sha256(path), rows=rows, table=table)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds,
    so a half-written file never exists under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json(path: str | Path, obj: object) -> DataRef:
    """Write a JSON document atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str), encoding="utf-8")
    return ref_for(path)


def polars_schema(table: str) -> pl.Schema:
    """A table's schema in polars types, for building frames row by row."""
    return pl.from_arrow(TABLES[table].empty_table()).schema


def conform(df: pl.DataFrame, table: str) -> pa.Table:
    """Cast a DataFrame to a table's schema; refuse missing/extra columns and bad nulls."""
    schema = TABLES[table]
    missing = [n for n in schema.names if n not in df.columns]
    extra = [c for c in df.columns if c not in schema.names]
    if missing or extra:
        raise ValueError(f"table {table!r}: missing columns {missing}, unexpected {extra}")
    for field in schema:
        nulls = df.get_column(field.name).null_count()
        if not field.nullable and nulls:
            raise ValueError(f"table {table!r}: required column {field.name!r} has {nulls} nulls")
    return df.select(schema.names).to_arrow().cast(schema)


def write_table(df: pl.DataFrame, path: str | Path, table: str) -> DataRef:
    """Write ``df`` as Parquet with the schema of ``table``, atomically; return its ref."""
    arrow = conform(df, table)
    path = Path(path).resolve()
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")
    return DataRef(path=path, sha256=file_sha256(path), rows=arrow.num_rows, table=table)


def read_table(ref: DataRef | str | Path, table: str | None = None) -> pl.DataFrame:
    """Read a table and check it carries its schema's columns."""
    path = Path(ref.path if isinstance(ref, DataRef) else ref)
    table = table or (ref.table if isinstance(ref, DataRef) else None)
    df = pl.read_parquet(path)
    if table is not None:
        missing = [n for n in TABLES[table].names if n not in df.columns]
        if missing:
            raise ValueError(f"{path}: not a {table!r} table, missing columns {missing}")
    return df


def concat_tables(shards: list[DataRef], table: str) -> pl.DataFrame:
    """The shards of one table as one frame; no shards gives an empty frame of its schema
    (a stage with nothing to do still writes its table)."""
    if not shards:
        return pl.DataFrame(schema=polars_schema(table))
    return pl.concat([read_table(s, table) for s in shards])
