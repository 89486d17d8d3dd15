"""Pinned to the official VPO code (github thu-coai/VPO at a2ffbe0): the optimizer's
instruction, the critique and refinement templates verbatim (by SHA-256 of the official
text, with the official placeholders), and the official parser's decisions."""

import hashlib

import pytest

from vpo_core.prompts.parsing import extract_prompt, parse_verdict
from vpo_core.prompts.templates import (
    CRITIQUE_TEMPLATE,
    OFFICIAL_SYSTEM_MESSAGE,
    OPTIMIZER_INSTRUCTION,
    REFINE_TEMPLATE,
    critique_messages,
    generation_messages,
    optimizer_messages,
)

# sha256 of the official strings (src/llama3_infer.py sys_prompt == src/process_data.py
# sys_prompt == the README's prompt_template; src/gpt4o_infer.py's critique and refine).
OFFICIAL = {
    "instruction": "d8f31468644532ef4ffda2bbd0e0ddd2a7cc27a5fd56d441ea17bc384fe6d24f",
    "critique": "d33b084f1875dfd1ab92f51ac4183cd93e728f3d973227ea7bf077cfd6253f38",
    "refine": "0116f22bcf6e45f66f4c00b79d2f5f915fa00fdf0d636e81d5704b984fd65242",
}


def _official(template: str) -> str:
    """Our template with the official ``{}`` placeholders."""
    return template.replace("{query}", "{}").replace("{prompt}", "{}")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_templates_are_the_official_text() -> None:
    assert _sha(_official(OPTIMIZER_INSTRUCTION)) == OFFICIAL["instruction"]
    assert _sha(_official(CRITIQUE_TEMPLATE)) == OFFICIAL["critique"]
    assert _sha(REFINE_TEMPLATE) == OFFICIAL["refine"]
    assert OFFICIAL_SYSTEM_MESSAGE.startswith("You are ChatGPT") and "user's" in \
        OFFICIAL_SYSTEM_MESSAGE


def test_instruction_is_filled_as_the_official_code_fills_it() -> None:
    query = "  a cute dog on the grass \n"
    official = _official(OPTIMIZER_INSTRUCTION).format(query.strip())   # llama3_infer.py
    assert optimizer_messages(query) == [{"role": "user", "content": official}]
    critique = critique_messages("a dog", "A dog on grass.")[0]["content"]
    assert critique == _official(CRITIQUE_TEMPLATE).format("a dog", "A dog on grass.")


FIGURE7 = "/work/shared/data/paper_figure7_few_shot_template.txt"


def test_generation_template_is_figure_7_word_for_word() -> None:
    """The paper's Figure 7 with its four ``{}`` filled as ``str.format`` would: the three
    demonstration prompts, then the query (a query's braces stay as written)."""
    import json
    from importlib import resources
    from pathlib import Path

    bundled = (resources.files("vpo_core") / "data" / "paper_figure7_few_shot_template.txt"
               ).read_text("utf-8")
    if Path(FIGURE7).is_file():                  # the steering copy, where this checkout has it
        assert bundled == Path(FIGURE7).read_text("utf-8")
    assert bundled.startswith("In this task, you need to transfer user's short query")
    assert "Here is some examples of video prompts" in bundled          # the paper's typo
    assert bundled.rstrip().endswith("[[start]]{your video prompt}[[end]]")
    demos = [d["prompt"] for d in json.loads(
        (resources.files("vpo_core") / "data" / "demonstrations.json").read_text("utf-8"))]
    query = "a cat {on} a sofa -ar 16:9"
    text = generation_messages(query)[0]["content"]
    expected = bundled.replace("{your video prompt}", "\0").replace("{}", "{%s}") \
        % tuple(range(4))
    expected = expected.format(*demos, query).replace("\0", "{your video prompt}")
    assert text == expected
    for n, demo in enumerate(demos, 1):
        assert f"Example {n}: {demo}\n" in text
    assert f"User Query: {query}\n" in text


@pytest.mark.parametrize(("answer", "official"), [
    # process_critique_data: 'Final Judgement (Yes or No)' in response, then
    # response.split('Final Judgement (Yes or No)')[1].count('Yes')
    ("Step-by-step verification: ok\nFinal Judgement (Yes or No): Yes", "yes"),
    ("Final Judgement (Yes or No): No", "no"),
    ("Final Judgement (Yes or No): The prompt is aligned. Yes", "yes"),
    ("Final Judgement (Yes or No): **Yes**", "yes"),
    ("Final Judgement (Yes or No): yes", "no"),          # the official check is case-sensitive
    ("Final Judgement (Yes or No): No.\nFinal Judgement (Yes or No): Yes", "no"),
])
def test_verdicts_are_decided_as_the_official_parser(answer: str, official: str) -> None:
    assert answer.split("Final Judgement (Yes or No)")[1].count("Yes") == (official == "yes")
    assert parse_verdict(answer, "judgement").value == official


def test_answer_without_the_marker_is_not_a_verdict_in_strict_mode() -> None:
    assert parse_verdict("The prompt is aligned. Yes", "judgement").status == "unparseable"


def _official_refinement(response: str) -> str | None:
    """src/process_data.py, process_dpo_data, verbatim but for the names."""
    if response.count('[[start]]') and response.count('[[end]]'):
        return response.split('[[start]]')[1].split('[[end]]')[0].strip()
    return None


OFFICIAL_CASES = [
    "Reflection: x\nFinal Refined Prompt: [[start]] A calm lake. [[end]]",
    "[[start]] first [[end]] [[start]] second [[end]]",
    "[[start]] first [[start]] second [[end]]",            # up to the next [[start]]
    "[[end]] stray end, then [[start]] A calm lake at dawn",  # both present: text after start
    'Final Refined Prompt: [[start]] "A quoted prompt" [[end]]',   # quotes kept
    "```\n[[start]] A calm lake [[end]]\n```",               # fences outside: kept out
    "[[start]]```A fenced lake```[[end]]",                  # fences inside: kept
    "[[start]]\n  A calm lake  \n[[end]]",                  # whitespace trimmed
    "[[Start]] A calm lake [[End]]",                         # no case variants
    "[[ start ]] A calm lake [[ end ]]",                     # no spacing variants
    "[start] A calm lake [end]",
    "Final Refined Prompt: [[start]] A calm lake at dawn, mist",  # cut off at the budget
    "A calm lake at dawn, mist rising over the water and reeds.",
]


@pytest.mark.parametrize("answer", OFFICIAL_CASES)
def test_refinements_are_read_as_the_official_parser(answer: str) -> None:
    parsed = extract_prompt(answer)
    assert (parsed.value if parsed.status == "ok" else None) == _official_refinement(answer)


def test_strict_parse_reports_a_cut_off_answer() -> None:
    cut = extract_prompt("Final Refined Prompt: [[start]] A calm lake at dawn, mist")
    assert (cut.status, cut.value) == ("cut-off", "A calm lake at dawn, mist")
    assert extract_prompt("I'm sorry, but I can't help with that.").status == "refusal"


@pytest.mark.parametrize("answer", [
    "final judgement (yes or no): Yes", "Final Judgment (Yes or No): Yes",
    "Final Judgement (yes or no): Yes", "Final  Judgement (Yes or No): Yes",
])
def test_strict_verdict_needs_the_marker_exactly_as_written(answer: str) -> None:
    assert "Final Judgement (Yes or No)" not in answer                  # official: skipped
    assert parse_verdict(answer, "judgement").status == "unparseable"
    assert parse_verdict(answer, "judgement", lenient=True).value == "yes"


def test_schedulers_are_the_official_ones(tmp_path) -> None:
    """src/config/sft.yaml: constant_with_warmup; dpo.yaml: linear (both warmup 0.1)."""
    from trl import DPOConfig, SFTConfig

    from vpo_core.config import load_config
    from vpo_core.training.arguments import arguments

    paper = load_config("paper")
    for kind, cfg, config_cls, scheduler in (
            ("sft", paper.train_sft, SFTConfig, "constant_with_warmup"),
            ("dpo", paper.train_dpo, DPOConfig, "linear")):
        args = arguments(kind, cfg, str(tmp_path), 0, 2048, world=8, cuda=False)
        assert args["lr_scheduler_type"] == scheduler and args["warmup_steps"] == 0.1
        built = config_cls(**args)
        assert built.lr_scheduler_type.value == scheduler and built.save_steps == 100
    assert paper.sample.max_new_tokens == 2048 and paper.pairs.video_pair_rule == "first-valid"
    assert paper.pairs.text_pair_rule == "official"
    # no loop control and no prompt budget of the embedded default's: the official decoding
    assert paper.judge.prompt_max_tokens is None and paper.judge.repetition_penalty == 1.0
    for section in (paper.sample, paper.evaluate):
        assert (section.repetition_penalty, section.no_repeat_ngram_size) == (1.0, 0)
    assert (paper.evaluate.reoptimize_rounds, paper.evaluate.temperature,
            paper.evaluate.top_p) == (4, 0.7, 1.0)


def test_the_paper_judge_sends_the_official_system_message(judge, fake_llm) -> None:
    """gpt4o_infer.py sends its system message before the critique (and so before the
    refinement that continues it); the paper preset's judge does the same, and the call
    store keys on it."""
    from vpo_core.config import load_config
    from vpo_core.llm.client import LLMClient, LLMRequest
    from vpo_core.testing.openai_server import default_responder

    paper = load_config("paper").judge
    assert paper.system_prompt == OFFICIAL_SYSTEM_MESSAGE and paper.temperature == 0.7
    seen: list[list[dict]] = []
    fake_llm.fake.responder = lambda messages: seen.append(messages) or \
        default_responder(messages)
    cfg = judge.model_copy(update={"system_prompt": OFFICIAL_SYSTEM_MESSAGE})
    asked = critique_messages("a dog", "A dog on grass.")
    LLMClient(cfg).run([LLMRequest("a", asked)])
    LLMClient(judge).run([LLMRequest("b", asked)])
    assert seen[0][0] == {"role": "system", "content": OFFICIAL_SYSTEM_MESSAGE}
    assert seen[0][1:] == asked and seen[1] == asked
