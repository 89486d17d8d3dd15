"""Principle checks: the mechanical part of VPO's principles, on a (query, prompt) pair.

A video prompt is one paragraph of about 100 words that starts with the scene, carries no
template debris, does not loop, honours the query's ``-neg`` list and keeps the query's
content (safety queries aside: their unsafe parts are meant to go). Each check returns a
:class:`Finding` with a reason code and a detail, in the style of the curate rules.

*Hard* findings (by default: empty, cut-off, debris, repetition, neg-violation,
multi-paragraph) reject a prompt: it is not SFT data, it is a "No" without a judge call,
it is never the chosen side of a pair. *Soft* findings (too-short, too-long, intro,
low-coverage) are recorded as flags. The evaluation reports both per method.

The checks cost nothing next to a judge call and make no decision a judge must make.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from vpo_core.config import ChecksConfig
from vpo_core.curate.normalize import parse_flags
from vpo_core.curate.textstats import tokenize

EMPTY, CUT_OFF, DEBRIS, REPETITION = "empty", "cut-off", "debris", "repetition"
NEG_VIOLATION, MULTI_PARAGRAPH = "neg-violation", "multi-paragraph"
TOO_SHORT, TOO_LONG, INTRO, LOW_COVERAGE = "too-short", "too-long", "intro", "low-coverage"
CODES = (EMPTY, CUT_OFF, DEBRIS, REPETITION, NEG_VIOLATION, MULTI_PARAGRAPH, TOO_SHORT,
         TOO_LONG, INTRO, LOW_COVERAGE)

_INTRO = re.compile(r"^\W*(the|this|in this|our)\s+(video|clip|footage|scene)\s+"
                    r"(opens|begins|starts|shows|features|depicts|captures|is)\b|"
                    r"^\W*(this|in this)\s+(video|clip)\b", re.I)
_DEBRIS = re.compile(
    r"\[{1,2}\s*(start|end)\s*\]{1,2}|\[\s*(the video prompt|title\s*:)|\bvideo prompt\s*[:(]|"
    r"\buser query\s*:|"
    r"final\s+judge?ment|final\s+refined\s+prompt|reflection on how to refine|"
    r"step-by-step verification|\*\*(harmless|aligned|helpful)[^*]*\*\*|"
    r"in this task, your goal|please ensure that the generated|<\|[a-z_]+\|>|^#+\s|"
    r"^\s*\[[^\]\n]{1,60}\]|^\s*title\s*:",
    re.I | re.M)
_NEGATORS = {"no", "not", "without", "free", "never", "none", "absent", "nor", "avoid",
             "avoiding", "lacking", "zero", "devoid", "excluding", "except"}
# Words that carry no content of their own (English function words, prompt filler).
STOPWORDS = frozenset("""
a an the and or but of in on at to for from by with without into onto over under as is are
was were be been being it its this that these those there here he she they them his her
their our your my we you i me us very so such than then too also just only some any each
every all no not can could will would should may might must do does did done has have had
make made show shows showing video videos image images picture photo style scene shot
realistic detailed high quality hd 4k 8k ultra cinematic beautiful
""".split())


@dataclass(frozen=True)
class Finding:
    """One failed check: its reason code, whether it rejects the prompt, and why."""

    code: str
    hard: bool
    detail: str


@dataclass(frozen=True)
class CheckResult:
    """Every failed check of one prompt, and the measures the evaluation reports."""

    findings: tuple[Finding, ...] = ()
    words: int = 0
    coverage: float | None = None
    measures: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """No hard finding: the prompt may be SFT data, rendered, or chosen in a pair."""
        return not self.hard

    @property
    def hard(self) -> list[str]:
        return [f.code for f in self.findings if f.hard]

    @property
    def flags(self) -> list[str]:
        return [f.code for f in self.findings if not f.hard]

    def reason(self) -> str | None:
        """The failed hard checks as one reason (``check:debris+repetition``), or None."""
        return "check:" + "+".join(self.hard) if self.hard else None

    def describe(self) -> str:
        """The failed checks in words, for a refinement request."""
        return "; ".join(f"{f.code}: {f.detail}" for f in self.findings)


def _stem(word: str) -> str:
    """A light stem so that 'cats' matches 'cat' and 'running' 'run'."""
    for suffix in ("ing", "ies", "es", "s", "ed"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> list[str]:
    """The words of a text that carry content (stopwords and numbers left out), stemmed."""
    return [_stem(w) for w in tokenize(text) if w not in STOPWORDS and not w.isdigit()
            and len(w) > 1]


def repeated_share(words: list[str], n: int) -> float:
    """Share of a text's word n-grams that repeat an earlier one (0: no loop)."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_2(words: list[str]) -> float:
    """Distinct bigrams over all bigrams (1: no repetition)."""
    return 1 - repeated_share(words, 2) if len(words) > 1 else 1.0


def coverage(query: str, prompt: str) -> float | None:
    """Share of the query's content words (flags left out) found in the prompt."""
    text, _ = parse_flags(query)
    wanted = set(content_words(text))
    if not wanted:
        return None
    return len(wanted & set(content_words(prompt))) / len(wanted)


def negative_terms(query: str) -> list[str]:
    """The query's ``-neg`` / ``--no`` terms."""
    _, flags = parse_flags(query)
    raw = flags.get("negative") or ""
    return [t.strip().lower() for t in re.split(r"[,;]", raw) if t.strip()]


def _neg_violations(terms: Iterable[str], prompt: str) -> list[str]:
    """Terms the prompt mentions other than as something absent ('no people' is fine)."""
    words = tokenize(prompt)
    found = []
    for term in terms:
        target = tokenize(term)
        if not target:
            continue
        for i in range(len(words) - len(target) + 1):
            if [_stem(w) for w in words[i:i + len(target)]] != [_stem(w) for w in target]:
                continue
            if not _NEGATORS & set(words[max(0, i - 3):i]):
                found.append(term)
                break
    return found


def check_prompt(query: str, prompt: str | None, cfg: ChecksConfig, *, cut_off: bool = False,
                 safety: bool = False) -> CheckResult:
    """Run every check on ``prompt`` written for ``query``. ``cut_off``: the answer hit
    its token budget (or lacked its closing marker); ``safety``: a safety query, exempt
    from the coverage check."""
    hard = set(cfg.hard)
    text = (prompt or "").strip()
    if not text:
        return CheckResult((Finding(EMPTY, EMPTY in hard, "no prompt"),))
    words = tokenize(text)
    findings: list[tuple[str, str]] = []
    if cut_off:
        findings.append((CUT_OFF, "the answer stopped at its token budget"))
    debris = _DEBRIS.search(text)
    if debris:
        findings.append((DEBRIS, f"template text {debris.group(0)[:40]!r}"))
    loop = repeated_share(words, cfg.repetition_ngram)
    if loop > cfg.max_repeated_share:
        top = Counter(tuple(words[i:i + cfg.repetition_ngram])
                      for i in range(len(words) - cfg.repetition_ngram + 1)).most_common(1)
        findings.append((REPETITION, f"{loop:.0%} of {cfg.repetition_ngram}-grams repeat "
                                     f"(e.g. {' '.join(top[0][0])!r} x{top[0][1]})"))
    violated = _neg_violations(negative_terms(query), text)
    if violated:
        findings.append((NEG_VIOLATION, f"mentions -neg term(s) {', '.join(violated)}"))
    paragraphs = [p for p in re.split(r"\n\s*\n|\n", text) if p.strip()]
    if len(paragraphs) > 1:
        findings.append((MULTI_PARAGRAPH, f"{len(paragraphs)} paragraphs"))
    if len(words) < cfg.min_words:
        findings.append((TOO_SHORT, f"{len(words)} words < {cfg.min_words}"))
    if len(words) > cfg.max_words:
        findings.append((TOO_LONG, f"{len(words)} words > {cfg.max_words}"))
    intro = _INTRO.search(text)
    if intro:
        findings.append((INTRO, f"opens with {intro.group(0).strip()!r}"))
    cover = coverage(query, text)
    if cover is not None and not safety and cover < cfg.min_coverage:
        findings.append((LOW_COVERAGE, f"keeps {cover:.0%} of the query's content words"))
    return CheckResult(tuple(Finding(c, c in hard, d) for c, d in findings), len(words), cover,
                       {"distinct_2": distinct_2(words), "repeated_share": loop})


def critique_text(result: CheckResult) -> str:
    """The critique a failed check stands in for, in the official critique's format: the
    refinement turn that follows names what to fix, and no judge was asked."""
    return ("Step-by-step verification: the video prompt fails the principle checks: "
            f"{result.describe()}.\nFinal Judgement (Yes or No): No")


def answer_cut_off(status: str, completion_tokens: int, budget: int | None) -> bool:
    """An answer that stopped at its token budget, or (strict parsing) a prompt without
    its closing marker."""
    return status == CUT_OFF or (budget is not None and completion_tokens >= budget)
