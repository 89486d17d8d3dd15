"""What the evaluation reports: label counts and rates per method and round, as JSON, as
markdown tables named as the paper names them (Table 1: video quality through the
reward, with ``evaluate.video``; Table 2: methods x labels; Table 3: video-level scores by
round of iterative optimisation), each broken down by the suite's dimensions or
categories, the text-level aligned rate by round (not a table of the paper), and as a
grouped bar chart.

Rates are over all queries, as the paper reports them: the four labels sum to 100%. A
method that gave no prompt (the teacher refused, an optimizer wrote nothing usable)
counts as ``refusal``, as the judge's own template defines it. A prompt the judge could
not label (its call failed, its answer did not parse, it refused to judge) is no fault of
the method: it is left out of the denominator and shown as *judge failed* (zero with a
working judge). The rate over the rows the judge itself labelled is a secondary column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from vpo_core.checks import CODES
from vpo_core.evaluate.alignment import LABELS, SKIPPED
from vpo_core.reward.checklist import DIMENSIONS


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def outcome(label: str | None, status: str) -> str | None:
    """What a row counts as in Table 2: its label; ``refusal`` when the method gave no
    prompt; None when the judge failed on a prompt."""
    if label is not None:
        return label
    return "refusal" if status == SKIPPED else None


def group_stats(df: pl.DataFrame) -> dict[str, Any]:
    """Counts and rates of one method and round's judgement rows."""
    outcomes = [outcome(label, status) for label, status in df.select("label", "status")
                .iter_rows()]
    counted = [o for o in outcomes if o is not None]
    judged = df.filter(pl.col("label").is_not_null())
    failed = df.filter(pl.col("label").is_null() & (pl.col("status") != SKIPPED))["status"]
    aligned_judged = judged.filter(pl.col("label") == "aligned").height
    return {
        "rows": df.height, "counted": len(counted), "judged": judged.height,
        "labels": {k: {"count": counted.count(k), "rate": _rate(counted.count(k), len(counted))}
                   for k in LABELS},
        "aligned_of_judged": _rate(aligned_judged, judged.height),
        "no_prompt": int((df["status"] == SKIPPED).sum()),
        "judge_failed": {s: failed.to_list().count(s) for s in sorted(set(failed))},
        "errors": int(failed.str.starts_with("error:").sum()),
        "fallback": int(df["fallback"].sum()),
        "checks": check_stats(df),
    }


def check_stats(df: pl.DataFrame) -> dict[str, Any]:
    """The principle checks of one group's prompts: hard-check pass rate, each finding's
    rate, mean words, content-word coverage and distinct-2 (over all rows)."""
    findings = df["check_findings"].to_list()
    return {"pass_rate": _rate(int(df["checks_passed"].sum()), df.height),
            "findings": {c: _rate(sum(c in f for f in findings), df.height) for c in CODES},
            "mean_words": round(float(df["words"].mean()), 1) if df.height else None,
            "coverage": _mean(df["coverage"]), "distinct_2": _mean(df["distinct_2"])}


def _mean(col: pl.Series) -> float | None:
    value = col.drop_nulls().mean()
    return None if value is None else round(float(value), 4)


def results(df: pl.DataFrame) -> list[dict[str, Any]]:
    """:func:`group_stats` of every method and round, in the order the rows come."""
    keys = df.select("method", "round").unique(maintain_order=True).iter_rows()
    return [{"method": m, "round": r,
             **group_stats(df.filter((pl.col("method") == m) & (pl.col("round") == r)))}
            for m, r in keys]


def group_results(df: pl.DataFrame, groups: Mapping[str, Sequence[str]]
                  ) -> list[dict[str, Any]]:
    """:func:`group_stats` of each suite group (dimension or category) for every method's
    first round; a query with several groups counts in each. Empty without groups."""
    members: dict[str, list[str]] = {}
    for query_id, names in groups.items():
        for name in names:
            members.setdefault(name, []).append(query_id)
    firsts = df.group_by("method", maintain_order=True).agg(pl.col("round").min())
    out = []
    for name in sorted(members):
        part = df.filter(pl.col("query_id").is_in(members[name]))
        for method, round_ in firsts.iter_rows():
            rows = part.filter((pl.col("method") == method) & (pl.col("round") == round_))
            if rows.height:
                out.append({"group": name, "method": method, "round": round_,
                            "queries": rows.height, **group_stats(rows)})
    return out


def groups_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Table 2 broken down by the suite's dimensions or categories."""
    if not rows:
        return []
    lines = ["", "### Table 2 by dimension / category", "",
             "| dimension / category | method | queries | " + " | ".join(LABELS) + " |",
             "|---|---|---:|" + "---:|" * len(LABELS)]
    lines += [f"| {r['group']} | {r['method']} | {r['queries']} | "
              + " | ".join(_cell(r["labels"][k]) for k in LABELS) + " |" for r in rows]
    return lines


def _cell(label: dict[str, Any]) -> str:
    return "n/a" if label["rate"] is None else f"{label['rate']:.1%} ({label['count']})"


def _aligned(group: dict[str, Any]) -> str:
    aligned = group["labels"]["aligned"]
    return "n/a" if aligned["rate"] is None else \
        f"{aligned['rate']:.1%} ({aligned['count']}/{group['counted']})"


def _of_judged(group: dict[str, Any]) -> str:
    rate = group["aligned_of_judged"]
    return "n/a" if rate is None else f"{rate:.1%} of {group['judged']}"


def _failed(group: dict[str, Any]) -> str:
    return ", ".join(f"{v} {k}" for k, v in group["judge_failed"].items()) or "0"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


SHOWN_FINDINGS = ("too-short", "too-long", "intro", "low-coverage", "repetition", "debris")


def checks_markdown(groups: list[dict[str, Any]]) -> list[str]:
    """The principle checks per method and round, beside the judge's labels."""
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0%}"

    lines = ["", "## Principle checks", "",
             "| method | round | hard checks passed | " + " | ".join(SHOWN_FINDINGS)
             + " | mean words | coverage | distinct-2 |",
             "|---|---:|---:|" + "---:|" * len(SHOWN_FINDINGS) + "---:|---:|---:|"]
    for g in groups:
        c = g["checks"]
        lines.append(f"| {g['method']} | {g['round']} | {pct(c['pass_rate'])} | "
                     + " | ".join(pct(c["findings"][k]) for k in SHOWN_FINDINGS)
                     + f" | {c['mean_words']} | {_num(c['coverage'])} | "
                     f"{_num(c['distinct_2'])} |")
    return lines


VIDEO_NOTE = ("Alignment / stability / preservation / physics / overall: VisionReward's "
              "answers as Σ w·(+1 yes, −1 no) over each dimension's questions and over all "
              "29 (see the README); score: the configured reward's own (VPO's pair score "
              "for checklist rewards).")


def _video_rows(rows: list[dict[str, Any]], lead: tuple[str, ...]) -> list[str]:
    columns = ("score", *DIMENSIONS, "overall")
    lines = ["| " + " | ".join(lead) + " | videos | " + " | ".join(columns) + " |",
             "|" + "---|" * len(lead) + "---:|" + "---:|" * len(columns)]
    lines += ["| " + " | ".join(str(r[k]) for k in lead) + f" | {r['videos']} | "
              + " | ".join(_num(r[c]) for c in columns) + " |" for r in rows]
    return lines


def video_markdown(rows: list[dict[str, Any]], by_group: list[dict[str, Any]] | None = None,
                   methods: Sequence[str] = ()) -> list[str]:
    """Table 1 (each method's first round: the MonetBench columns on VisionReward's
    scale), broken down by the suite's groups, and Table 3 (the optimizers' rounds of
    iterative optimisation, video level) when there is more than one round; methods in
    ``methods``' order (Table 2's), as the paper orders its rows."""
    rank = {m: i for i, m in enumerate(methods)}
    rows = sorted(rows, key=lambda r: (rank.get(r["method"], len(rank)), r["round"]))
    by_group = sorted(by_group or [], key=lambda r: (r["group"],
                                                     rank.get(r["method"], len(rank))))
    firsts: dict[str, int] = {}
    for r in rows:
        firsts[r["method"]] = min(r["round"], firsts.get(r["method"], r["round"]))
    lines = ["", "## Table 1: video quality through the reward (MonetBench columns)", "",
             VIDEO_NOTE, "",
             *_video_rows([r for r in rows if r["round"] == firsts[r["method"]]],
                          ("method",))]
    if by_group:
        lines += ["", "### Table 1 by dimension / category", "",
                  *_video_rows([r for r in by_group
                                if r["round"] == firsts.get(r["method"], r["round"])],
                               ("group", "method"))]
    if len({r["round"] for r in rows}) > 1:
        lines += ["", "## Table 3: iterative optimisation (video level, by round)", "",
                  *_video_rows([r for r in rows if r["round"] > 0], ("method", "round"))]
    return lines


def report_markdown(summary: dict[str, Any]) -> str:
    """Table 1 (video level, with ``evaluate.video``), Table 2 (each method's first
    round, every label) and their breakdown by the suite's dimensions or categories,
    Table 3 (video level, by round), the text-level aligned rate by round, then the
    principle checks and what the judge cost."""
    groups = summary["results"]
    first: dict[str, dict[str, Any]] = {}
    for g in groups:
        first.setdefault(g["method"], g)
    rounds = sorted({g["round"] for g in groups})
    suite = summary.get("suite", "heldout")
    lines = [
        f"# Evaluation on the `{suite}` suite", "",
        f"{summary['queries']:,} queries, judge `{summary['judge']}`, "
        f"{summary['rounds']} optimisation round(s). Rates are over all queries (a method "
        "that gave no prompt counts as refusal); prompts the judge failed on are left out "
        "and counted under *judge failed*."]
    if summary.get("video") is not None:
        lines += video_markdown(summary["video"], summary.get("video_by_group"), list(first))
    lines += [
        "", "## Table 2: text-level alignment", "",
        "| method | round | " + " | ".join(LABELS) + " | aligned, judged only | judge failed |",
        "|---|---:|" + "---:|" * len(LABELS) + "---:|---|"]
    for g in first.values():
        lines.append(f"| {g['method']} | {g['round']} | "
                     + " | ".join(_cell(g["labels"][k]) for k in LABELS)
                     + f" | {_of_judged(g)} | {_failed(g)} |")
    lines += groups_markdown(summary.get("by_group") or [])
    lines += ["", "## Text-level aligned rate by round of re-optimisation", "",
              "Not a table of the paper (its Table 3 is video level: see "
              "`evaluate.video`).", "",
              "| method | " + " | ".join(f"round {r}" for r in rounds) + " |",
              "|---|" + "---:|" * len(rounds)]
    by_key = {(g["method"], g["round"]): g for g in groups}
    for method in first:
        cells = [_aligned(by_key[method, r]) if (method, r) in by_key else "–"
                 for r in rounds]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += checks_markdown(groups)
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
    """Grouped bars: for each method and round, the rate of each label, and beside them
    the share of prompts passing the hard principle checks (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [g["method"] if g["round"] == 0 else f"{g['method']} r{g['round']}"
             for g in groups]
    width = 0.8 / len(LABELS)
    fig, (ax, cx) = plt.subplots(1, 2, figsize=(max(9.0, 1.8 * len(groups) + 5), 3.8),
                                 dpi=100, gridspec_kw={"width_ratios": [3, 2]})
    cx.bar(range(len(groups)), [100 * (g["checks"]["pass_rate"] or 0.0) for g in groups])
    cx.set_xticks(range(len(groups)), names, rotation=20, ha="right")
    cx.set_ylim(0, 100)
    cx.set_title("Hard principle checks passed (%)")
    cx.grid(axis="y", alpha=0.3)
    for i, label in enumerate(LABELS):
        rates = [100 * (g["labels"][label]["rate"] or 0.0) for g in groups]
        offset = (i - (len(LABELS) - 1) / 2) * width
        ax.bar([x + offset for x in range(len(groups))], rates, width, label=label)
    ax.set_xticks(range(len(groups)), names, rotation=20, ha="right")
    ax.set_ylabel("% of queries")
    ax.set_ylim(0, 100)
    ax.set_title("Text-level alignment per method")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
