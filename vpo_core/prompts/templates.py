"""VPO's prompt templates, written for this project after the paper's figures and the
official code: few-shot generation (Figure 7), principle critique (Figure 8, with the
official rule that ``-xxx`` flags are constraints and ``-neg`` means "must not
contain"), refinement of the prompts judged "No", the optimizer's own instruction
(Harmless / Aligned / Helpful), and the judge's safety check used by the curate stage.

User queries, and prompts a model wrote, are untrusted data. They are inserted in one
pass (:func:`render`): braces, ``{query}`` or ``%s`` in them are never expanded, and the
markers the parsers look for (``[[start]]``, ``[[end]]``, ``Final Judgement (Yes or
No):`` ...) are defused first, so text inside a query cannot fake an answer's structure.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources

OPTIMIZER_INSTRUCTION = """\
Your task is to turn the user's short query into a detailed, well-structured English prompt for generating a short video.

The video prompt must follow three principles:

1. **Harmless**: it is safe and respectful, with no harmful, offensive or unethical content.
2. **Aligned**: it keeps the user's intent and every relevant detail of the query, clearly and coherently.
3. **Helpful for high-quality video**: it is descriptive and vivid, and the scene stays feasible for a few seconds of video, without complexity or unrealistic elements the query did not ask for.

User Query: {query}

Video Prompt:"""

FEWSHOT_TEMPLATE = """\
You are an expert at writing prompts for text-to-video models. Expand the user's short query into one detailed video prompt that follows these principles:

1. **Harmless**: remove or soften anything unsafe (pornography, violence, gore, illegal acts, hate, disturbing content) while keeping the rest of the user's intent.
2. **Accurate**: keep every subject, action, style and constraint of the query. Options such as -ar, -camera or -motion are constraints to follow; -neg lists things that must not appear.
3. **Helpful**: describe the subject, setting, lighting, colors, camera movement and mood in one vivid paragraph of about 100 words, feasible for a short clip. Start directly with the scene, not with "The video opens with".

Here are examples of well-crafted video prompts.

{demonstrations}

Now write the video prompt for this query.

User Query: “{query}”

Write the prompt between [[start]] and [[end]].
Video Prompt:"""

DEMONSTRATION = """User Query: “{query}”
Video Prompt: [[start]] {prompt} [[end]]"""

CRITIQUE_TEMPLATE = """\
Please act as an expert in evaluating the alignment of video prompts. The video prompt was written from a user's short query to create a short video (around 5 seconds).

Your task is to judge carefully whether the video prompt aligns well with the query. Follow these rules:
1. The video prompt must avoid every safety issue of the query (pornography, violence, illegal acts, unethical content, gore, disturbing content, extreme horror, bias and sensitive topics).
2. The video prompt must contain all the information about the video in the query, except for safety issues.
3. The video prompt should be descriptive and clear to help generate a high-quality video, and avoid overly complicated scenes.
4. The video prompt may ignore what the query asks about sound or format (video length, aspect ratio, fps and the like).
5. An option -xxx (e.g. -camera) is a constraint the video prompt must follow; -neg means "must not contain": the video prompt must avoid those elements.
6. The video prompt should begin directly, without phrases like "The video opens/begins with".

User Query: “{query}”

Video Prompt: “{prompt}”

Judge carefully whether the video prompt aligns with the query, and give a final judgement (Yes or No; Yes means well aligned) in exactly this format:
Step-by-step verification: xxx
Final Judgement (Yes or No): xxx"""

REFINE_TEMPLATE = """\
Based on your judgement, refine the video prompt so that it is harmless and contains all the information in the query.

Output in exactly this format:
Reflection on how to refine the Prompt: xxx
Final Refined Prompt: [[start]] xxx [[end]]"""

SAFETY_TEMPLATE = """\
Please act as a content-safety reviewer for a text-to-video service. Decide whether the user's request below asks for unsafe video content: pornography or sexual content, graphic violence or gore, self-harm, illegal activity, hate or harassment, or otherwise disturbing material. Creative, dark or dramatic requests that do not ask for such content are safe.

User Query: “{query}”

Answer in exactly this format:
Reason: xxx
Unsafe (Yes or No): xxx"""

# Markers the parsers trust; in untrusted text they are defused before insertion.
_MARKERS = [
    (re.compile(r"\[\[\s*(start|end)\s*\]\]", re.I), r"[\1]"),
    (re.compile(r"(final\s+judge?ment|unsafe)\s*\(\s*yes\s+or\s+no\s*\)\s*:?", re.I), r"\1 -"),
    (re.compile(r"final\s+refined\s+prompt\s*:", re.I), "refined prompt -"),
]
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def defuse(text: str) -> str:
    """Untrusted text with the answer markers made inert."""
    for pattern, repl in _MARKERS:
        text = pattern.sub(repl, text)
    return text


def render(template: str, **values: str) -> str:
    """Fill ``{name}`` placeholders in one pass. Values are inserted verbatim: nothing in
    them is ever read as a placeholder or a format directive."""
    def fill(match: re.Match) -> str:
        if match.group(1) not in values:
            raise KeyError(f"template placeholder {{{match.group(1)}}} has no value")
        return values[match.group(1)]

    return _PLACEHOLDER.sub(fill, template)


@cache
def demonstrations() -> tuple[dict[str, str], ...]:
    """The three few-shot demonstrations (vpo_core/data/demonstrations.json)."""
    text = (resources.files("vpo_core") / "data" / "demonstrations.json").read_text("utf-8")
    return tuple(json.loads(text))


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def optimizer_messages(query: str) -> list[dict[str, str]]:
    """What the optimizer (the policy) is trained on and asked at inference."""
    return _user(render(OPTIMIZER_INSTRUCTION, query=defuse(query)))


def generation_messages(query: str) -> list[dict[str, str]]:
    """Few-shot generation of a video prompt by the teacher (Figure 7)."""
    demos = "\n\n".join(render(DEMONSTRATION, **d) for d in demonstrations())
    return _user(render(FEWSHOT_TEMPLATE, demonstrations=demos, query=defuse(query)))


def critique_messages(query: str, prompt: str) -> list[dict[str, str]]:
    """The judge's principle critique of a prompt for a query (Figure 8)."""
    return _user(render(CRITIQUE_TEMPLATE, query=defuse(query), prompt=defuse(prompt)))


def refine_messages(critique: list[dict[str, str]], judgement: str) -> list[dict[str, str]]:
    """The refinement turn, continuing the critique conversation."""
    return [*critique, {"role": "assistant", "content": judgement},
            {"role": "user", "content": REFINE_TEMPLATE}]


def safety_messages(query: str) -> list[dict[str, str]]:
    """The judge's check of a query the curate stage flagged as unsafe."""
    return _user(render(SAFETY_TEMPLATE, query=defuse(query)))
