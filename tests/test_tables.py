"""The data contract: schema enforcement, atomic writes, content-addressed references."""

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from vpo_core.schemas import REJECTS
from vpo_core.tables import atomic_path, read_table, ref_for, write_table


def _rejects(n: int = 2) -> pl.DataFrame:
    return pl.DataFrame({"source_row": list(range(n)), "source_id": [None] * n,
                         "original": ["x"] * n, "query": ["x"] * n, "reason": ["empty"] * n,
                         "detail": [None] * n, "duplicate_of": [None] * n})


def test_write_casts_to_the_schema_and_references_content(tmp_path: Path) -> None:
    ref = write_table(_rejects(), tmp_path / "r.parquet", "rejects")
    assert ref.rows == 2 and ref.table == "rejects" and ref.is_valid()
    assert pq.read_schema(ref.path).remove_metadata().equals(REJECTS)
    assert read_table(ref).height == 2
    assert ref_for(tmp_path / "r.parquet").sha256 == ref.sha256
    (tmp_path / "r.parquet").write_bytes(b"changed")
    assert not ref.is_valid()


@pytest.mark.parametrize(("change", "message"), [
    (lambda df: df.drop("reason"), "missing columns \\['reason'\\]"),
    (lambda df: df.with_columns(extra=pl.lit(1)), "unexpected \\['extra'\\]"),
    (lambda df: df.with_columns(reason=pl.lit(None, pl.String)),
     "required column 'reason' has 2 nulls"),
])
def test_schema_violations_are_refused(tmp_path: Path, change, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_table(change(_rejects()), tmp_path / "r.parquet", "rejects")
    assert list(tmp_path.iterdir()) == []                    # nothing half-written


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_folder_digest_is_answered_by_its_manifest_until_a_file_changes(
        tmp_path: Path, monkeypatch) -> None:
    import os

    from vpo_core import tables

    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w" * 1000)
    (model / "config.json").write_text("{}")
    first = tables.dir_sha256(model)
    assert (model / tables.MANIFEST).is_file()
    reads = []
    monkeypatch.setattr(tables, "file_sha256",
                        lambda p: reads.append(p) or tables.hashlib.sha256(b"").hexdigest())
    assert tables.dir_sha256(model) == first and reads == []      # no file read again
    monkeypatch.undo()
    st = (model / "weights.bin").stat()
    os.utime(model / "weights.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert tables.dir_sha256(model) == first                      # touched: hashed again
    (model / "weights.bin").write_bytes(b"v" * 1000)
    assert tables.dir_sha256(model) != first
    (model / tables.MANIFEST).unlink()
    assert tables.dir_sha256(model) == tables.dir_sha256(model)   # manifest not hashed
