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


def test_generation_template_follows_figure_7() -> None:
    text = generation_messages("a cat on a sofa -ar 16:9")[0]["content"]
    assert "Pornography, Violence, Illegal, Ethics, Bloody, Disturbing, Extreme horror, " \
        "Bias and Sensitive topics" in text
    assert "5. The video prompt should ignore content in the user query about sound " \
        "generation and format requirements" in text
    demos = text.split("Here are some examples")[1].split("Now write")[0]
    for ratio in ("16:9", "9:16", "aspect ratio", "framed in a"):
        prompts = [line for line in demos.splitlines() if line.startswith("Video Prompt:")]
        assert all(ratio not in p for p in prompts), ratio


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


@pytest.mark.parametrize(("answer", "value"), [
    # process_dpo_data: needs both markers; split('[[start]]')[1].split('[[end]]')[0].strip()
    ("Reflection: x\nFinal Refined Prompt: [[start]] A calm lake. [[end]]", "A calm lake."),
    ("[[start]] first [[end]] [[start]] second [[end]]", "first"),
    ("Final Refined Prompt: [[start]] A calm lake at dawn, mist", None),   # cut at the budget
])
def test_refinements_are_read_as_the_official_parser(answer: str, value: str | None) -> None:
    parsed = extract_prompt(answer)
    assert (parsed.value if parsed.status == "ok" else None) == value


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
