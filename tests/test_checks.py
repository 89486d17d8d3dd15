"""The principle checks on hand-made cases, the debris and loops the bundled teacher
really wrote among them (issue: principle checks)."""

import pytest

from vpo_core.checks import check_prompt, coverage, distinct_2, negative_terms
from vpo_core.config import ChecksConfig

CFG = ChecksConfig()
GOOD = ("A red fox with a thick winter coat trots across a quiet snow-covered meadow at dawn, "
        "its breath forming small clouds in the cold air. Soft golden light rises behind a "
        "line of frosted pine trees, casting long blue shadows over the fresh powder. The fox "
        "pauses, tilts its head toward a faint sound beneath the snow, then leaps and dives "
        "nose-first into the drift, sending sparkling flakes into the air. The camera follows "
        "at a low angle with a slow tracking shot and natural colors.")


def _codes(query: str, prompt: str | None, **kw) -> tuple[list[str], list[str]]:
    result = check_prompt(query, prompt, CFG, **kw)
    return result.hard, result.flags


def test_a_good_prompt_passes_every_check() -> None:
    result = check_prompt("a fox in the snow", GOOD, CFG)
    assert result.passed and result.findings == () and result.coverage == 1.0
    assert 60 <= result.words <= 160 and result.reason() is None


@pytest.mark.parametrize(("prompt", "code"), [
    ("", "empty"),
    ("   ", "empty"),
    (None, "empty"),
    ("[The video prompt: [The video prompt: a fox in the snow at dawn, soft light " * 3,
     "debris"),
    ("Video Prompt: A fox trots through snow. " + GOOD, "debris"),
    (GOOD + " Final Judgement (Yes or No): Yes", "debris"),
    ("**Harmless**: the prompt is safe. " + GOOD, "debris"),
    ("[Joe Biden, Death] " + GOOD, "debris"),       # a bracketed label the teacher opened with
    ("Title: The Fox\n" + GOOD, "debris"),
    ("a scene of endless, endless challenges, " * 12, "repetition"),
    (GOOD + "\n\n" + GOOD.replace("fox", "red fox"), "multi-paragraph"),
])
def test_hard_checks(prompt: str | None, code: str) -> None:
    hard, _ = _codes("a fox in the snow", prompt)
    assert code in hard


def test_cut_off_is_what_the_caller_saw() -> None:
    assert _codes("a fox in the snow", GOOD, cut_off=True)[0] == ["cut-off"]


def test_neg_terms_must_not_appear_unless_negated() -> None:
    query = "cyberpunk city at night, rain -ar 16:9 -neg people, cars"
    assert negative_terms(query) == ["people", "cars"]
    city = ("A towering cyberpunk city at night as steady rain falls through neon light, wet "
            "streets reflecting magenta and cyan signs while steam drifts from rooftop vents")
    assert _codes(query, city + ", crowds of people hurry by.")[0] == ["neg-violation"]
    assert _codes(query, city + "; the streets are empty, with no people and no cars.")[0] == []
    assert "people" not in check_prompt(query, city + ", people.", CFG).describe().split(":")[0]


def test_soft_flags() -> None:
    hard, flags = _codes("a fox in the snow", "The video opens with a fox in the snow.")
    assert hard == [] and set(flags) == {"intro", "too-short"}
    hard, flags = _codes("a fox in the snow", " ".join([GOOD] * 3))
    assert "too-long" in flags
    drifting = GOOD.replace("fox", "deer").replace("snow", "grass").replace("snow-covered",
                                                                            "green")
    assert "low-coverage" in _codes("a fox in the snow", drifting)[1]
    strict = CFG.model_copy(update={"hard": [*CFG.hard, "low-coverage"]})
    assert check_prompt("a fox in the snow", drifting, strict).hard == ["low-coverage"]


def test_safety_queries_may_drop_their_unsafe_words() -> None:
    query = "soldier shot bleeding on the battlefield, gore, brutal"
    safe = ("A somber scene on a smoky battlefield at dusk, where a weary soldier in a torn "
            "uniform kneels beside a fallen comrade as medics hurry through the haze, muted "
            "colors, slow handheld camera, no graphic wounds shown, a respectful tone "
            "throughout the moment.")
    assert coverage(query, safe) < CFG.min_coverage
    assert "low-coverage" in _codes(query, safe)[1]
    assert _codes(query, safe, safety=True) == ([], [])


def test_measures() -> None:
    assert distinct_2("a b c d".split()) == 1.0
    assert distinct_2("a b a b a b".split()) == pytest.approx(2 / 5)
    hard_config = ChecksConfig(hard=["empty", "intro"])
    result = check_prompt("a fox", "The video opens with a fox.", hard_config)
    assert result.hard == ["intro"] and result.reason() == "check:intro"
