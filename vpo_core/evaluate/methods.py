"""The methods the evaluation compares (paper Tables 2 and 3).

A method is any callable ``(queries, rounds) -> {round: prompts}`` giving, for each round
it produces, one prompt per query (same order). Round 0 is a one-shot method's output
(the query itself, the few-shot teacher); rounds 1..R are an optimizer's rewrites, round
r + 1 re-optimising round r (Table 3). A prompt is a string, a :class:`Generated` (a
prompt, or ``None`` with the status saying why there is none) or ``None``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vpo_core.checks import CUT_OFF
from vpo_core.config import LLMConfig
from vpo_core.errors import StageFailed
from vpo_core.llm.client import LLMClient, LLMRequest
from vpo_core.optimizer import Optimizer, Sampling
from vpo_core.prompts.parsing import extract_prompt
from vpo_core.prompts.templates import generation_messages
from vpo_core.tables import read_table


@dataclass(frozen=True)
class Generated:
    """A method's output for one query: ``status`` ok / refusal / unparseable /
    error:<kind>; ``prompt`` is None when nothing usable came back."""

    prompt: str | None
    status: str = "ok"


Prompt = str | Generated | None
Method = Callable[[Sequence[str], int], Mapping[int, Sequence[Prompt]]]


def as_generated(prompt: Prompt) -> Generated:
    """Any prompt a method returns as a :class:`Generated`."""
    if isinstance(prompt, Generated):
        return prompt
    return Generated(prompt) if prompt is not None else Generated(None, "missing")


def original(queries: Sequence[str], rounds: int) -> dict[int, list[Prompt]]:
    """The baseline: the user's query, unchanged."""
    return {0: list(queries)}


@dataclass
class FewShot:
    """The teacher LLM with the Figure 7 few-shot template (the paper's GPT-4o row).
    A teacher refusal is kept as the prompt, so the judge step labels it ``refusal``."""

    teacher: LLMConfig
    api_key: str | None = field(default=None, repr=False)
    model_cache: str | None = None
    work_root: Path | None = None  # the call store's work directory

    def __call__(self, queries: Sequence[str], rounds: int) -> dict[int, list[Prompt]]:
        client = LLMClient(self.teacher, self.api_key, self.model_cache, self.work_root)
        results = client.run([LLMRequest(str(i), generation_messages(q))
                              for i, q in enumerate(queries)])
        if results and not any(r.ok for r in results):
            kinds = Counter(r.status for r in results)
            raise StageFailed(f"evaluate few-shot: all {len(results)} teacher calls failed "
                              f"({dict(kinds)}); first error: {results[0].error}")
        lenient = self.teacher.parse_mode == "lenient"
        out: list[Prompt] = []
        for r in results:
            parsed = extract_prompt(r.text, lenient) if r.ok else None
            if parsed is None:
                out.append(Generated(None, r.status))
            elif parsed.status == "refusal":
                out.append(Generated(r.text, "refusal"))
            else:
                out.append(Generated(parsed.value, parsed.status))
        return {0: out}


@dataclass
class OptimizerMethod:
    """A trained optimizer (SFT, DPO, ...) rewriting each query ``rounds`` times. The model
    is loaded on call and released after, so several models are evaluated one at a time;
    ``load`` is where a caller plugs in another loader (a shared or pre-loaded model)."""

    model: str
    sampling: Sampling = field(default_factory=Sampling)
    load: Callable[[str], Optimizer] = Optimizer

    def __call__(self, queries: Sequence[str], rounds: int) -> dict[int, list[Prompt]]:
        """Each round's prompts; one that stopped at the token budget is ``cut-off`` (still
        judged; the principle checks count it as failed)."""
        per_query = self.load(self.model).optimize_generations(queries, rounds, self.sampling)
        return {r + 1: [Generated(q[r].text, CUT_OFF if q[r].truncated else "ok")
                        for q in per_query] for r in range(rounds)}


@dataclass(frozen=True)
class FixedPrompts:
    """Prompts made elsewhere (another optimizer, a file): for each query text, its
    prompt after each round, round 1 first. It gives the rounds it has, up to ``rounds``;
    a query it lacks a prompt for gets none (``missing``)."""

    by_query: Mapping[str, Sequence[str]]

    @classmethod
    def from_optimized(cls, path: str | Path) -> FixedPrompts:
        """From an ``optimized`` table of one model (``vpo optimize --input``)."""
        rounds: dict[str, dict[int, str]] = {}
        for row in read_table(path, "optimized").iter_rows(named=True):
            rounds.setdefault(row["query"], {})[row["iteration"]] = row["prompt"]
        return cls({q: [by_round[i] for i in sorted(by_round)] for q, by_round in rounds.items()})

    def __call__(self, queries: Sequence[str], rounds: int) -> dict[int, list[Prompt]]:
        have = min(rounds, max(map(len, self.by_query.values()), default=0))
        return {r + 1: [_nth(self.by_query.get(q, ()), r) for q in queries]
                for r in range(have)}


def _nth(prompts: Sequence[str], r: int) -> str | None:
    return prompts[r] if r < len(prompts) else None
