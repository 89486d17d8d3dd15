"""What the evaluation reports: label counts and rates per method and round, as JSON, as
markdown tables in the paper's shape (Table 2: methods x labels; Table 3: aligned rate per
round of re-optimisation) and as a grouped bar chart.

Rates are over the rows the judge labelled; rows without a label (judge errors,
unparseable answers, judge refusals, methods that gave no prompt) are counted apart, so
a flaky judge shows up as a smaller denominator, never as a skewed rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.evaluate.alignment import LABELS


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def group_stats(df: pl.DataFrame) -> dict[str, Any]:
    """Counts and rates of one method and round's judgement rows."""
    judged = df.filter(pl.col("label").is_not_null())
    labels = judged["label"].to_list()
    statuses = df.filter(pl.col("label").is_null())["status"].to_list()
    return {
        "rows": df.height, "judged": judged.height,
        "labels": {k: {"count": labels.count(k), "rate": _rate(labels.count(k), judged.height)}
                   for k in LABELS},
        "unjudged": {s: statuses.count(s) for s in sorted(set(statuses))},
        "errors": sum(s.startswith("error:") for s in statuses),
        "fallback": int(df["fallback"].sum()),
    }


def results(df: pl.DataFrame) -> list[dict[str, Any]]:
    """:func:`group_stats` of every method and round, in the order the rows come."""
    keys = df.select("method", "round").unique(maintain_order=True).iter_rows()
    return [{"method": m, "round": r,
             **group_stats(df.filter((pl.col("method") == m) & (pl.col("round") == r)))}
            for m, r in keys]


def _cell(label: dict[str, Any]) -> str:
    return "n/a" if label["rate"] is None else f"{label['rate']:.1%} ({label['count']})"


def _aligned_of_judged(group: dict[str, Any]) -> str:
    aligned = group["labels"]["aligned"]
    return "n/a" if aligned["rate"] is None else \
        f"{aligned['rate']:.1%} ({aligned['count']}/{group['judged']})"


def _unjudged(group: dict[str, Any]) -> str:
    return ", ".join(f"{v} {k}" for k, v in group["unjudged"].items()) or "0"


def report_markdown(summary: dict[str, Any]) -> str:
    """Table 2 (each method's first round, every label), Table 3 (aligned rate by round),
    then what the judge cost."""
    groups = summary["results"]
    first: dict[str, dict[str, Any]] = {}
    for g in groups:
        first.setdefault(g["method"], g)
    rounds = sorted({g["round"] for g in groups})
    lines = [
        "# Evaluation: text-level alignment", "",
        f"{summary['queries']:,} held-out queries, judge `{summary['judge']}`, "
        f"{summary['rounds']} optimisation round(s). Rates are over the rows the judge "
        "labelled; the rest are counted under *not judged*.", "",
        "## Methods (Table 2)", "",
        "| method | round | " + " | ".join(LABELS) + " | judged | not judged |",
        "|---|---:|" + "---:|" * len(LABELS) + "---:|---|"]
    for g in first.values():
        lines.append(f"| {g['method']} | {g['round']} | "
                     + " | ".join(_cell(g["labels"][k]) for k in LABELS)
                     + f" | {g['judged']}/{g['rows']} | {_unjudged(g)} |")
    lines += ["", "## Aligned rate by round of re-optimisation (Table 3)", "",
              "| method | " + " | ".join(f"round {r}" for r in rounds) + " |",
              "|---|" + "---:|" * len(rounds)]
    by_key = {(g["method"], g["round"]): g for g in groups}
    for method in first:
        cells = [_aligned_of_judged(by_key[method, r]) if (method, r) in by_key else "–"
                 for r in rounds]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "## Judge", "",
              "| measure | value |", "|---|---:|",
              f"| judge calls | {summary['calls']:,} |",
              f"| refusals detected without a call | {summary['local_refusals']:,} |",
              f"| lenient (fallback) parses | {summary['fallback']:,} |",
              f"| failed calls | {summary['errors']:,} |",
              f"| tokens (prompt + completion) | {summary['prompt_tokens']:,} + "
              f"{summary['completion_tokens']:,} |",
              f"| cost (USD, where litellm knows it) | {summary['cost']:.4f} |",
              f"| time | {summary['seconds']:.1f} s |"]
    return "\n".join(lines) + "\n"


def label_chart(groups: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: for each method and round, the rate of each label (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [g["method"] if g["round"] == 0 else f"{g['method']} r{g['round']}"
             for g in groups]
    width = 0.8 / len(LABELS)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 3), 3.8), dpi=100)
    for i, label in enumerate(LABELS):
        rates = [100 * (g["labels"][label]["rate"] or 0.0) for g in groups]
        offset = (i - (len(LABELS) - 1) / 2) * width
        ax.bar([x + offset for x in range(len(groups))], rates, width, label=label)
    ax.set_xticks(range(len(groups)), names, rotation=20, ha="right")
    ax.set_ylabel("% of judged prompts")
    ax.set_ylim(0, 100)
    ax.set_title("Text-level alignment per method")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
