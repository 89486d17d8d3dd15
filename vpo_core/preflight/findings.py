"""What a preflight check reports, what it may reach beyond this process, and how the
findings are shown (a terminal table, a Prefect markdown artifact)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from vpo_core.errors import StageFailed

if TYPE_CHECKING:
    from vpo_core.preflight.kubernetes import KubernetesPool

Level = Literal["error", "warning", "ok"]
LEVELS: tuple[Level, ...] = ("error", "warning", "ok")
FIELD_WIDTH = 26  # longer field names push their line's text along


@dataclass(frozen=True)
class Finding:
    """One check's outcome: the configuration ``field`` it is about, what was ``found``,
    and how to ``fix`` it. Errors stop a run; warnings and oks do not."""

    level: Level
    field: str
    found: str
    fix: str = ""


@dataclass(frozen=True)
class PoolStatus:
    """What the Prefect server says about a work pool; ``error`` when it could not be
    asked (no server)."""

    exists: bool = False
    online_workers: int = 0
    workers: int = 0
    step_deployment: bool = False
    error: str | None = None
    kubernetes: KubernetesPool | None = None   # a Kubernetes pool's settings


@dataclass(frozen=True)
class ProbeResult:
    """Whether a worker of a pool saw the parent's probe file in the work directory:
    True, False (it ran and did not), or None (no worker took it in time)."""

    seen: bool | None
    detail: str


@dataclass(frozen=True)
class Reach:
    """What the checks may reach beyond the configuration and this machine. The Prefect
    pieces (Secret blocks, work pools, a run on a worker) are filled in by
    ``tasks/preflight.py``: ``vpo_core`` never imports Prefect. A piece left None is
    reported as not checked."""

    offline: bool = False
    load_secret: Callable[[str], str] | None = None
    inspect_pool: Callable[[str], PoolStatus] | None = None
    probe_pool: Callable[[str, Path], ProbeResult] | None = None


class PreflightFailed(StageFailed):
    """The configuration cannot run: the message lists the errors and their fixes."""


def errors(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]


def counts(findings: Sequence[Finding]) -> str:
    """``2 errors, 1 warning, 7 ok``."""
    n = {level: sum(f.level == level for f in findings) for level in LEVELS}
    return (f"{n['error']} error{'s' * (n['error'] != 1)}, "
            f"{n['warning']} warning{'s' * (n['warning'] != 1)}, {n['ok']} ok")


def text_table(findings: Sequence[Finding]) -> str:
    """Findings as terminal lines, errors first: level, field, what was found, and the fix
    on the line below (long texts stay greppable: nothing is wrapped or cut)."""
    ordered = sorted(findings, key=lambda f: LEVELS.index(f.level))
    width = min(FIELD_WIDTH, max((len(f.field) for f in ordered), default=0))
    lines = []
    for f in ordered:
        lines.append(f"  {f.level:<7}  {f.field:<{width}}  {f.found}")
        if f.fix:
            lines.append(f"  {'':<7}  {'':<{width}}  fix: {f.fix}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(findings: Sequence[Finding], title: str) -> str:
    """Findings as a markdown table (the ``preflight`` artifact), errors first."""
    ordered = sorted(findings, key=lambda f: LEVELS.index(f.level))
    lines = [f"# {title}", "", counts(findings), "", "| level | field | found | how to fix |",
             "|---|---|---|---|"]
    lines += [f"| {f.level} | `{f.field}` | {_cell(f.found)} | {_cell(f.fix)} |"
              for f in ordered]
    return "\n".join(lines) + "\n"


def failure_message(findings: Sequence[Finding]) -> str:
    """The message a run stopped by preflight fails with: every error and its fix."""
    bad = errors(findings)
    lines = [f"preflight: {counts(findings)}; the run stopped before its first stage"]
    lines += [f"  {f.field}: {f.found}" + (f" (fix: {f.fix})" if f.fix else "") for f in bad]
    return "\n".join(lines)
