"""VisionReward-Video's checklist: 64 yes/no questions about a video and the two ways of
turning the answers into one score.

- VPO's score (what the pair builder ranks by): ``Σ w_i·[answer_i = yes]`` over the 64
  answers, with the weights of VPO's ``get_score`` (29 non-zero, the rest 0.0).
- VisionReward's own score: ``mean(w·(+1 yes / −1 no))`` over its 29 selected questions.
- The paper's Table 1 columns (:func:`table1_scores`): the same signed terms summed per
  dimension and over all 29 (see the README's "MonetBench on VisionReward's scale").

Answers come back in two shapes, both read by :func:`parse_answers`: VisionReward's
QA-format (``{"QA": [{"id": 1, "q": ..., "response": "yes"}, ...]}``, ids 1-based, as VPO's
``process_data.py`` reads it) and a vision LLM's numbered lines (``1. yes``). The data file
and its attribution live in ``vpo_core/data``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from vpo_core.errors import InputError

N_QUESTIONS = 64
PLACEHOLDER = "[[prompt]]"
# The dimensions of the paper's Table 1 (MonetBench through VisionReward) as groups of
# checklist questions (0-based indices into the 64, in VisionReward_video_qa.txt's order,
# which lists each dimension's questions together): how the video meets the text; the
# stability of motion, image quality and camera; the preservation of the object's shape;
# physics. Only VisionReward's 29 selected questions carry weight.
DIMENSIONS: dict[str, tuple[int, ...]] = {
    "alignment": tuple(range(0, 4)),                       # meets the text's requirements
    "stability": (35, 36, *range(43, 49)),                 # smoothness, image, camera
    "preservation": tuple(range(20, 27)),                  # shape at start, maintained
    "physics": (37, 38, *range(56, 60)),                   # realistic movement, physics
}


@dataclass(frozen=True)
class Question:
    """One checklist question; ``selected`` marks VisionReward's 29 scored questions."""

    index: int
    text: str
    vpo_weight: float
    selected: bool
    select_index: int | None


@dataclass(frozen=True)
class VideoToScore:
    """What a checklist backend needs of a video: a row id, its file, the prompt it was
    rendered from, and the text its questions ask about: the user's query, one text for
    every video of a query, as VisionReward's pair comparison and VPO's data ask them
    (scored against its own rewrite, each video would answer different questions)."""

    id: str
    video_path: str
    prompt: str
    query: str


@dataclass(frozen=True)
class Answers:
    """One video's answers as a backend returned them (``None`` = no usable answer);
    ``status`` is ``error:<kind>`` when the backend failed on this video."""

    values: list[bool | None] | None
    status: str = "ok"
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@cache
def checklist() -> tuple[Question, ...]:
    """The 64 questions in VisionReward's order (vpo_core/data/...checklist.json)."""
    text = (resources.files("vpo_core") / "data" / "visionreward_video_checklist.json"
            ).read_text("utf-8")
    items = json.loads(text)["questions"]
    out = tuple(Question(q["index"], q["question"], float(q["vpo_weight"]), bool(q["in_select"]),
                         q["select_index"]) for q in items)
    if [q.index for q in out] != list(range(N_QUESTIONS)):
        raise ValueError("the bundled checklist must hold questions 0..63 in order")
    return out


@cache
def vpo_weights() -> np.ndarray:
    """The 64 weights of VPO's score."""
    return np.array([q.vpo_weight for q in checklist()])


@cache
def selected() -> tuple[int, ...]:
    """Indices (into the 64) of VisionReward's 29 questions, in its own order."""
    chosen = sorted((q for q in checklist() if q.selected), key=lambda q: q.select_index)
    return tuple(q.index for q in chosen)


def questions(text: str) -> list[str]:
    """The 64 questions about a video, asked about ``text`` (the user's query).
    Whitespace in it is collapsed so that each question stays on one line (the runner and
    the VLM list them one a line, and a query cannot start a line of its own)."""
    flat = " ".join(text.split())
    return [q.text.replace(PLACEHOLDER, flat) for q in checklist()]


def signed_terms(answers: Sequence[bool]) -> np.ndarray:
    """VisionReward's per-question terms ``w_i·(+1 yes / −1 no)`` (``inference-video.py``
    encodes answers as ±1 and weighs them with ``weight.json``; 0 off its 29 questions)."""
    return vpo_weights() * np.where(np.array(validate_answers(answers)), 1.0, -1.0)


def table1_scores(answers: Sequence[bool], encoding: str = "signed") -> dict[str, float]:
    """One video's Table 1 columns on VisionReward's scale: each dimension's
    ``Σ w_i·(±1)`` over its questions, and ``overall`` the same sum over all 29 (the sum
    ``compare_two_videos`` ranks by; ``score()`` divides it by 29). Ranges: alignment
    ±2.35, stability ±0.29, preservation ±0.86, physics ±0.83, overall ±6.31.
    ``encoding="binary"`` sums ``w_i·[yes]`` instead (VPO's ``get_score`` encoding:
    ranges from 0 to the same maxima), the other candidate of the README's evidence."""
    if encoding not in ("signed", "binary"):
        raise ValueError(f"encoding must be 'signed' or 'binary', got {encoding!r}")
    terms = signed_terms(answers) if encoding == "signed" else \
        vpo_weights() * np.array(validate_answers(answers), dtype=float)
    return {**{name: float(terms[list(idx)].sum()) for name, idx in DIMENSIONS.items()},
            "overall": float(terms.sum())}


def validate_answers(answers: Sequence[bool | None] | None,
                     field_name: str = "answers") -> list[bool]:
    """64 booleans, or an InputError naming the field and what is wrong."""
    if answers is None:
        raise InputError("no answers", field=field_name)
    values = list(answers)
    if len(values) != N_QUESTIONS:
        raise InputError(f"expected {N_QUESTIONS} answers, got {len(values)}", field=field_name)
    missing = [i + 1 for i, a in enumerate(values) if a is None]
    if missing:
        raise InputError(f"no yes/no answer to question(s) {_short(missing)}", field=field_name)
    bad = [i + 1 for i, a in enumerate(values) if not isinstance(a, bool | np.bool_)]
    if bad:
        raise InputError(f"answer(s) {_short(bad)} are not booleans", field=field_name)
    return [bool(a) for a in values]


def _short(numbers: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (f" ... ({len(numbers)} in all)" if len(numbers) > limit else "")


def vpo_score(answers: Sequence[bool]) -> float:
    """VPO's score: the sum of the weights of the questions answered yes."""
    return float(vpo_weights() @ np.array(validate_answers(answers), dtype=float))


def visionreward_score(answers: Sequence[bool]) -> float:
    """VisionReward's score: mean of w·(+1 yes / −1 no) over its 29 questions."""
    values = np.array(validate_answers(answers))[list(selected())]
    weights = vpo_weights()[list(selected())]
    return float(np.mean(weights * np.where(values, 1.0, -1.0)))


def dominates(chosen: Sequence[bool], rejected: Sequence[bool]) -> bool:
    """VPO's rule: ``chosen`` is yes wherever ``rejected`` is, and yes on one more."""
    a = np.array(validate_answers(chosen, "chosen answers"))
    b = np.array(validate_answers(rejected, "rejected answers"))
    return bool(np.all(a >= b) and np.any(a > b))


_YES_NO = re.compile(r"\b(yes|no)\b", re.I)
_NUMBERED = re.compile(r"^\W*(?:q(?:uestion)?\s*)?(\d{1,3})(?:\s*[.):\]\-–]|\s)\s*(.*)$", re.I)


def _yes_no(text: str) -> bool | None:
    """A lone yes/no answer, e.g. VisionReward's decoded first token ("yes", " No.")."""
    match = re.fullmatch(r"\W*(yes|no)\W*", text or "", re.I)
    return None if match is None else match.group(1).lower() == "yes"


def _from_qa(items: Any) -> list[bool | None] | None:
    if isinstance(items, dict):
        items = items.get("QA")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return None
    out: list[bool | None] = [None] * N_QUESTIONS
    for pos, item in enumerate(items):
        number = item.get("id", pos + 1)
        if isinstance(number, int) and 1 <= number <= N_QUESTIONS:
            out[number - 1] = _yes_no(str(item.get("response", "")))
    return out


def parse_answers(text: str | dict[str, Any] | None) -> list[bool | None]:
    """64 answers (``None`` where none could be read) from VisionReward's QA-format (a
    JSON object with ``QA``, its list, or the already-decoded dict) or from numbered
    lines (``1. yes``, ``Q2: No``, ``3) Does ...? Yes``). On a numbered line that repeats
    the question, the answer is read after its last ``?``; a number given twice takes
    its last answer."""
    if isinstance(text, dict):
        return _from_qa(text) or [None] * N_QUESTIONS
    out: list[bool | None] = [None] * N_QUESTIONS
    if not text:
        return out
    stripped = text.strip()
    if stripped[:1] in "{[":
        try:
            qa = _from_qa(json.loads(stripped))
        except json.JSONDecodeError:
            qa = None
        if qa is not None:
            return qa
    for line in stripped.splitlines():
        match = _NUMBERED.match(line.replace("*", ""))
        if not match or not 1 <= int(match.group(1)) <= N_QUESTIONS:
            continue
        rest = match.group(2)
        rest = rest.rsplit("?", 1)[1] if "?" in rest else rest
        found = _YES_NO.search(rest)
        if found:
            out[int(match.group(1)) - 1] = found.group(1).lower() == "yes"
    return out


def read_answers_file(path: str | Path) -> dict[str, list[bool | None]]:
    """Answers computed elsewhere, by video path: VisionReward QA-format JSONL (one
    ``{"video_path": ..., "QA": [...]}`` a line, as VPO's pipeline stores it), JSONL with
    ``{"video_path": ..., "answers": [true, ...]}``, or Parquet with ``video_path`` and
    ``answers`` columns. Errors name the file, the line and the field."""
    path = Path(path)
    if path.suffix == ".parquet":
        import polars as pl

        df = pl.read_parquet(path)
        for col in ("video_path", "answers"):
            if col not in df.columns:
                raise InputError("missing column", path=str(path), field=col)
        return {r["video_path"]: list(r["answers"] or []) for r in df.iter_rows(named=True)}
    out: dict[str, list[bool | None]] = {}
    for row, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not JSON: {exc}", path=str(path), row=row) from None
        if not isinstance(item, dict) or not isinstance(item.get("video_path"), str):
            raise InputError("expected an object with a video_path", path=str(path), row=row,
                             field="video_path")
        if "answers" in item:
            out[item["video_path"]] = list(item["answers"] or [])
        elif "QA" in item:
            out[item["video_path"]] = parse_answers(item)
        else:
            raise InputError("expected 'QA' or 'answers'", path=str(path), row=row,
                             field="QA")
    return out
