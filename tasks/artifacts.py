"""Prefect artifacts every stage publishes: a markdown summary and a table of sample rows."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact


def _cell(value: Any, width: int = 200) -> Any:
    text = value if isinstance(value, (int, float, bool)) or value is None else str(value)
    return text[:width] + "…" if isinstance(text, str) and len(text) > width else text


def publish_stage(stage: str, summary: str, rows: list[dict[str, Any]]) -> None:
    """Summary and sample rows of one stage run, keyed ``<stage>-summary`` and
    ``<stage>-samples`` so the UI shows their history across runs."""
    create_markdown_artifact(key=f"{stage}-summary", markdown=summary,
                             description=f"{stage}: counts, rates, timings and outputs")
    create_table_artifact(key=f"{stage}-samples",
                          table=[{k: _cell(v) for k, v in row.items()} for row in rows],
                          description=f"{stage}: sample rows")


def stats_markdown(stage: str, stats: dict[str, Any], outputs: dict[str, Any],
                   seconds: float) -> str:
    """A stage summary from its counts: one table row per figure (nested counts flattened
    as ``status: ok 12, error:oom 1``) and where its outputs are."""
    lines = [f"# {stage}", "", "| measure | value |", "|---|---:|"]
    for key, value in stats.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        lines.append(f"| {key} | {value} |")
    lines.append(f"| time | {seconds:.1f} s |")
    lines += ["", *[f"- {name}: `{ref.path}`" + (f" ({ref.rows:,} rows)" if ref.rows is not None
                                                 else "") for name, ref in outputs.items()]]
    return "\n".join(lines) + "\n"
