"""VPO's prompt templates.

As published by the official code (github thu-coai/VPO, a2ffbe0), verbatim: the
optimizer's instruction (README, ``src/llama3_infer.py``, ``src/process_data.py``: the
released VPO checkpoints and SFT/DPO data use it, so they work through this code
unchanged), the six-rule principle critique and the refinement turn
(``src/gpt4o_infer.py``), and its system message (``OFFICIAL_SYSTEM_MESSAGE``, which the
``paper`` preset sends with every judge call). The official typos are kept on purpose.

From the paper, as printed (its Figure 7 is not in the official code): the few-shot
generation template, kept verbatim in ``vpo_core/data`` (typos included). Written for this
project: the judge's safety check used by the curate stage.

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

# The official optimizer instruction (two trailing spaces after items 1 and 2, and no
# space after "User Query:", as published).
OPTIMIZER_INSTRUCTION = (
    "In this task, your goal is to expand the user's short query into a detailed and well-structured English prompt for generating short videos.\n"
    "\n"
    "Please ensure that the generated video prompt adheres to the following principles:\n"
    "\n"
    "1. **Harmless**: The prompt must be safe, respectful, and free from any harmful, offensive, or unethical content.  \n"
    "2. **Aligned**: The prompt should fully preserve the user's intent, incorporating all relevant details from the original query while ensuring clarity and coherence.  \n"
    "3. **Helpful for High-Quality Video Generation**: The prompt should be descriptive and vivid to facilitate high-quality video creation. Keep the scene feasible and well-suited for a brief duration, avoiding unnecessary complexity or unrealistic elements not mentioned in the query.\n"
    "\n"
    "User Query:{query}\n"
    "\n"
    "Video Prompt:"
)

OFFICIAL_SYSTEM_MESSAGE = (
    "You are ChatGPT, a large language model trained by OpenAI. Follow the user's "
    "instructions carefully to provide accurate and helpful content.")

# The paper's Figure 7, word for word (vpo_core/data/paper_figure7_few_shot_template.txt):
# three ``Example N: {}`` slots, each one demonstration video prompt, then ``User Query: {}``.
# ``{your video prompt}`` in its answer format is part of the text, not a slot.
FIGURE7_FILE = "paper_figure7_few_shot_template.txt"
FIGURE7_SLOTS = 4

# The official critique (src/gpt4o_infer.py, get_messages_list_dpo_critique), verbatim.
CRITIQUE_TEMPLATE = """\
Please act an expert in evaluating the alignment of video prompts. The video prompt is transferred from user's short query for creating short videos (around 5 seconds).

Your task is to carefully judge whether the video prompt aligns well with the given query.
Please follow these rules to judge:
1. The video prompt should avoid any safety issues from the user query (such as Pornography, Violence, Illegal, Ethics, Bloody, Disturbing, Extreme horror, Bias and Sensitive topics).
2. The video prompt should contain all the information about video from the query except for safety issues.
3. The video prompt should be descriptive and clear to help generate high quality videos, and avoid too complicated scenarios.
4. The video prompt can ignore content in the user query about sound generation and format requirements (video length, ratio, fps etc.).
5. -xxx(e.g. camera) means corresponding constraints, the video prompt should follow these constraints; and '-neg' means don't contain, the video prompt should avoid elements with this tag.
6. The video prompt should begin directly without introductory phrases like "The video opens/begins with".

User Query: “{query}”

Video Prompt: “{prompt}”

Please carefully judge if the video prompt aligns with the query and give a final judgement (Yes or No, Yes means well-aligned) in the following format:
Step-by-step verification: xxx
Final Judgement (Yes or No): xxx"""

# The official refinement turn (src/gpt4o_infer.py, get_messages_list_refine), verbatim.
REFINE_TEMPLATE = """\
Based on your judgement, refine the video prompt while ensureing the video prompt is harmless and contains all the information in the query.

Output in the following format:
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
    """What the optimizer (the policy) is trained on and asked at inference: the official
    instruction with the query (stripped, as the official code does)."""
    return _user(render(OPTIMIZER_INSTRUCTION, query=defuse(query.strip())))


@cache
def figure7_template() -> str:
    """The few-shot generation template (paper Figure 7), as bundled."""
    text = (resources.files("vpo_core") / "data" / FIGURE7_FILE).read_text("utf-8")
    if text.count("{}") != FIGURE7_SLOTS:
        raise ValueError(f"{FIGURE7_FILE} must hold {FIGURE7_SLOTS} '{{}}' slots")
    return text


def generation_messages(query: str) -> list[dict[str, str]]:
    """Few-shot generation of a video prompt by the teacher (Figure 7): the three
    demonstration prompts, then the query, each filled into its ``{}`` in one pass."""
    values = [d["prompt"] for d in demonstrations()] + [defuse(query)]
    parts = figure7_template().split("{}")
    if len(values) != len(parts) - 1:
        raise ValueError(f"Figure 7 takes {len(parts) - 2} demonstrations, "
                         f"demonstrations.json holds {len(values) - 1}")
    text = parts[0] + "".join(v + rest for v, rest in zip(values, parts[1:], strict=True))
    return _user(text)


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
