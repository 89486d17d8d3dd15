"""The critique step that sft-data and text-feedback share (paper §3.2 and Figure 8): a
prompt that passes the principle checks is judged by the judge; one that fails a hard
check is a No without a call, its critique the checks' own, so that the refinement that
follows names what to fix."""

from __future__ import annotations

from dataclasses import dataclass

from vpo_core.checks import CheckResult, critique_text
from vpo_core.llm.client import Ask, LLMRequest, LLMResult
from vpo_core.prompts.parsing import Parsed, parse_verdict


def step_status(result: LLMResult, parsed: Parsed) -> str:
    """A step's status: the call's when it failed, else its answer's parse."""
    return result.status if not result.ok else parsed.status


@dataclass(frozen=True)
class Critique:
    """A critique: the judge's call (None when the checks answered), its text, the
    verdict ("yes", "no" or None), the step's status and whether a lenient parse was
    needed."""

    call: LLMResult | None
    text: str
    judgement: str | None
    status: str
    fallback: bool = False


async def critique(ask: Ask, request: LLMRequest, checked: CheckResult,
                   lenient: bool) -> Critique:
    """The judge's critique of a prompt that passed ``checked``; the checks' own No
    otherwise (``request`` holds the critique messages)."""
    if not checked.passed:
        return Critique(None, critique_text(checked), "no", checked.reason() or "")
    call = await ask(request)
    verdict = parse_verdict(call.text, "judgement", lenient) if call.ok else Parsed(call.status)
    return Critique(call, call.text, verdict.value, step_status(call, verdict),
                    verdict.fallback)
