"""Every input format, and bad input: clear errors for bad files, reasons for bad rows."""

import json
from pathlib import Path

import polars as pl
import pytest

from vpo_core.curate.sources import (
    bundled_queries,
    fetch_hf_dataset,
    input_files,
    read_raw,
    read_raw_files,
)
from vpo_core.errors import InputError
from vpo_core.schemas import RAW

VIDPROM = {"uuid": ["u1", "u2", "u3"], "prompt": ["a cat on grass", None, "a dog -ar 16:9"],
           "time": ["2023-07-01 00:00:00"] * 3,
           "toxicity": [0.01, 0.2, 0.9], "obscene": [0.0, 0.0, 0.1],
           "identity_attack": [0.0] * 3, "insult": [0.0] * 3, "threat": [0.0] * 3,
           "sexual_explicit": [0.0, 0.0, 0.7]}


def test_vidprom_csv_and_parquet(tmp_path: Path) -> None:
    df = pl.DataFrame(VIDPROM)
    df.write_csv(tmp_path / "v.csv")
    df.write_parquet(tmp_path / "v.parquet")
    for name in ("v.csv", "v.parquet"):
        raw = read_raw(tmp_path / name)
        assert raw.columns == RAW.names
        assert raw["source_id"].to_list() == ["u1", "u2", "u3"]
        assert raw["read_error"].to_list() == [None, "null_prompt", None]
        assert raw["sexual_explicit"].to_list() == [0.0, 0.0, 0.7]


def test_json_jsonl_txt(tmp_path: Path) -> None:
    (tmp_path / "q.json").write_text(json.dumps(["a cat", {"k": 1}, 7, None]))
    raw = read_raw(tmp_path / "q.json")
    assert raw["read_error"].to_list() == [None, "not_a_string", "not_a_string", "null_prompt"]
    (tmp_path / "q.jsonl").write_text('{"prompt": "a cat", "uuid": "x"}\n\n{broken\n"a dog"\n')
    raw = read_raw(tmp_path / "q.jsonl")
    assert raw["source_row"].to_list() == [0, 2, 3]            # line numbers, blanks skipped
    assert raw["prompt"].to_list()[::2] == ["a cat", "a dog"]
    assert raw["read_error"].to_list() == [None, "invalid_json", None]
    assert raw["source_id"].to_list() == ["x", None, None]
    (tmp_path / "q.txt").write_bytes(b"a cat\n\xff\xfe bad bytes\n\na dog\n")
    raw = read_raw(tmp_path / "q.txt")
    assert raw["source_row"].to_list() == [0, 1, 3]
    assert raw["read_error"].to_list() == [None, "invalid_utf8", None]


def test_invalid_utf8_in_csv_is_a_row_error(tmp_path: Path) -> None:
    (tmp_path / "v.csv").write_bytes(b"prompt\na cat\n\xc3\x28 broken\na dog\n")
    assert read_raw(tmp_path / "v.csv")["read_error"].to_list() == [None, "invalid_utf8", None]


def test_missing_prompt_column_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    pl.DataFrame({"uuid": ["u1"], "text": ["a cat"]}).write_csv(path)
    with pytest.raises(InputError) as err:
        read_raw(path)
    assert str(path) in str(err.value) and "'prompt'" in str(err.value)
    assert "['uuid', 'text']" in str(err.value)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("q.xlsx", b"PK\x03\x04", "unsupported format '.xlsx'"),
    ("q.parquet", b"not parquet at all", "not a readable PARQUET file"),
    ("q.json", b'{"prompts": ["a"]}', "expected a JSON list"),
    ("q.json", b"[1, 2", "not valid JSON"),
    ("q.json", b'[{"text": "a cat"}]', "no object has the prompt field"),
])
def test_unreadable_files_fail_at_once(tmp_path: Path, name: str, content: bytes,
                                       message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_raw(tmp_path / name)
    assert str(tmp_path / name) in str(err.value)


def test_hf_dataset_offline_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="HF_HUB_OFFLINE") as err:
        fetch_hf_dataset("hf:WenhaoWang/VidProM", "train", None, tmp_path / "cache",
                         tmp_path / "out.parquet")
    assert "WenhaoWang/VidProM" in str(err.value)
    assert not (tmp_path / "out.parquet").exists()


def test_bundled_sample() -> None:
    queries = bundled_queries()
    assert len(queries) == 5000 and all(isinstance(q, str) for q in queries)


def test_a_folder_or_a_glob_is_one_input(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "2026-01-02.txt").write_text("a fox in snow\n\nthe moon over a lake\n")
    pl.DataFrame(VIDPROM).write_csv(dumps / "2026-01-01.csv")
    (dumps / "README.md").write_text("where the nightly dumps land")      # not a query file
    files = input_files(str(dumps))
    assert [p.name for p in files] == ["2026-01-01.csv", "2026-01-02.txt"]   # name order
    assert input_files(str(dumps / "*.txt")) == [files[1]]
    assert input_files(str(tmp_path / "**" / "*.csv")) == [files[0]]
    raw, parts = read_raw_files(files)
    assert raw.columns == RAW.names and raw.height == 5
    assert raw["source_row"].to_list() == [0, 1, 2, 3, 5]   # counts on (line 4 was blank)
    assert raw["prompt"].to_list()[3:] == ["a fox in snow", "the moon over a lake"]
    assert parts == [{"file": "2026-01-01.csv", "rows": 3, "first_row": 0},
                     {"file": "2026-01-02.txt", "rows": 2, "first_row": 3}]


def test_an_empty_folder_or_pattern_names_itself(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: the folder holds no query file"):
        input_files(str(tmp_path / "empty"))
    with pytest.raises(InputError, match=r"\*\.csv: no file matches the pattern"):
        input_files(str(tmp_path / "nothing" / "*.csv"))
    with pytest.raises(InputError, match="input file does not exist"):
        input_files(str(tmp_path / "missing.csv"))
