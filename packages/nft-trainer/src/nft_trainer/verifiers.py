"""Binary verifiers (reward functions) for NFT / GRPO training with verifiable rewards.

Both reward functions follow TRL's reward-function signature: they are called as
``f(prompts=..., completions=..., completion_ids=..., <dataset columns>=..., trainer_state=..., ...)``
and return one float per completion, ``1.0`` when the completion's final answer equals the reference
``answer`` and ``0.0`` otherwise (never ``None`` or NaN). NFT labels a completion positive when its
reward is 1 (``correct_mask = c ∈ {0, 1}`` in the paper's released code).

Completions may be plain strings or conversational (a list of ``{"role", "content"}`` messages; the
content of the last assistant message is verified, and multimodal content parts of type ``"text"`` are
joined).

- :func:`numeric_match_reward`: exact match of short numeric answers (integers, decimals, fractions,
  signs, thousands separators, ``\\boxed{}``/``\\frac{}{}``), compared as exact rationals, with a string
  fallback for non-numeric answers. Rules for finding the answer in the text: :func:`extract_final_answer`.
- :func:`math_verify_reward`: symbolic comparison with the ``math-verify`` package (LaTeX and
  ``\\boxed{}`` answers, expressions, sets, intervals); its parsing/verification timeouts and
  exceptions are caught and give ``0.0``.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Literal

__all__ = [
    "STRATEGIES",
    "completion_text",
    "extract_final_answer",
    "math_verify_reward",
    "numeric_match_reward",
    "parse_number",
]

Strategy = Literal["last", "first", "full"]
STRATEGIES: tuple[str, ...] = ("last", "first", "full")

# --------------------------------------------------------------------------------------------------
# Number syntax. A sign belongs to the number only when it does not follow a word character or a
# closing bracket, so "5-3" is the numbers 5 and 3, while "x = -3" is -3. Thousands separators must
# be well formed (1,234,567); "1,5" is the two numbers 1 and 5. Exponents are limited to 3 digits so
# that a hostile "1e999999999" cannot build a gigantic integer.
_UINT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_UDEC = rf"(?:{_UINT}(?:\.\d+)?|\.\d+)"
_UREAL = rf"{_UDEC}(?:[eE][-+]?\d{{1,3}}(?![\d.]))?"
_SIGN = r"(?:(?<![\w)\]}])[-+\u2212])?"
_NUMBER = rf"{_SIGN}{_UREAL}(?:\s*/\s*[-+\u2212]?{_UREAL})?"
_NUMBER_RE = re.compile(rf"(?<![\w.]){_NUMBER}(?![\w])")
_FULL_NUMBER_RE = re.compile(rf"\s*[-+\u2212]?{_UREAL}(?:\s*/\s*[-+\u2212]?{_UREAL})?\s*")

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES_RE = re.compile(r"####")
_ANSWER_MARKER_RE = re.compile(r"\banswer\s*(?:is\b\s*:?|:|=)", re.IGNORECASE)
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, or None (one pass, O(n))."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    closing: dict[int, int] = {}  # index after an opening brace -> index of its closing brace
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i + 1)
        elif ch == "}" and stack:
            closing[stack.pop()] = i
    for start in reversed(starts):
        if start in closing:  # unbalanced boxes are skipped
            return text[start : closing[start]].strip()
    return None


def _clean_latex(text: str) -> str:
    """Remove LaTeX decoration that does not change a short answer's value."""
    s = text.strip()
    s = _FRAC_RE.sub(r"(\1)/(\2)", s)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\$", "\\%", "$", "%", "{,}"):
        s = s.replace(token, "," if token == "{,}" else "")
    s = re.sub(r"\\(?:text|mathrm|textbf|mathbf)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\u2212", "-")
    s = s.strip()
    # "(3)/(4)" from \frac with plain numbers -> "3/4"
    s = re.sub(r"^\(([^()]*)\)\s*/\s*\(([^()]*)\)$", r"\1/\2", s)
    s = s.rstrip(".").strip()
    return s


def _real(token: str) -> Fraction:
    return Fraction(Decimal(token.replace(",", "").replace("\u2212", "-").replace(" ", "")))


def parse_number(text: str) -> Fraction | None:
    """Exact value of ``text`` when the whole (LaTeX-cleaned) string is one number, else None.

    Accepted: ``46``, ``-46``, ``+46``, ``1,234``, ``0.5``, ``.5``, ``1e3``, ``3/4``, ``-3/4``,
    ``\\frac{3}{4}``, ``\\dfrac{-3}{4}``, ``$46$``, ``46%`` (the percent sign is dropped), ``46.``
    (trailing period). A zero denominator gives None.

    Raises:
        TypeError: ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_number: text must be a str, got {type(text).__name__}")
    s = _clean_latex(text)
    if not _FULL_NUMBER_RE.fullmatch(s):
        return None
    num, sep, den = s.partition("/")
    try:
        value = _real(num)
        if sep:
            d = _real(den)
            if d == 0:
                return None
            value = value / d
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    return value


def extract_final_answer(text: str, *, strategy: Strategy = "last") -> str | None:
    """The final answer in a model's output text, as a string, or None when there is none.

    Rules, first that applies wins:

    1. the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced;
    2. the first line after the last ``####`` (GSM8K style);
    3. after the last "answer is" / "answer:" / "answer =" (any case): the first number in the rest of
       that sentence (up to a period that ends it or a newline), else that sentence's text;
    4. otherwise, by ``strategy``: ``"last"`` (default, chain-of-thought outputs): the last number in
       the text, so text after it without digits ("46. Done!") is ignored; ``"first"`` (direct answers
       such as a completion of ``"12+34="``): the first number, so anything after it
       (``"46 7+8=15"``) is ignored; ``"full"``: the whole stripped text is the answer (so any
       trailing text makes it wrong; this also covers non-numeric short answers).

    Args:
        text: the completion text.
        strategy: one of ``"last"``, ``"first"``, ``"full"`` (rule 4 only).

    Raises:
        TypeError: ``text`` is not a str.
        ValueError: unknown ``strategy``.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_final_answer: text must be a str, got {type(text).__name__}")
    if strategy not in STRATEGIES:
        raise ValueError(f"extract_final_answer: strategy must be one of {STRATEGIES}, got {strategy!r}")
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = list(_HASHES_RE.finditer(text))
    if hashes:
        tail = text[hashes[-1].end() :].strip()
        line = tail.splitlines()[0].strip() if tail else ""
        return line or None
    markers = list(_ANSWER_MARKER_RE.finditer(text))
    if markers:
        tail = text[markers[-1].end() :].strip()
        sentence = re.split(r"(?<=[^\d])\.(?:\s|$)|\n", tail, maxsplit=1)[0].strip()
        match = _NUMBER_RE.search(sentence)
        if match is not None:
            return match.group(0).strip()
        return sentence or None
    if strategy == "full":
        stripped = text.strip()
        return stripped or None
    numbers = _NUMBER_RE.findall(text)
    if not numbers:
        return None
    return (numbers[-1] if strategy == "last" else numbers[0]).strip()


def completion_text(completion: Any, *, index: int | None = None) -> str:
    """Text of one TRL completion: a str, or the content of the last assistant message of a list of
    ``{"role", "content"}`` dicts (content may be a str or a list of ``{"type": "text", "text"}`` parts).

    Raises:
        TypeError: any other shape (the message names the completion index).
    """
    where = f"completions[{index}]" if index is not None else "completion"
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        if not all(isinstance(m, dict) for m in completion):
            raise TypeError(f"{where}: a conversational completion must be a list of message dicts")
        messages = [m for m in completion if m.get("role", "assistant") == "assistant"]
        if not messages:
            return ""
        content = messages[-1].get("content", "")
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, (list, tuple)):
            parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            return "".join(str(p) for p in parts)
        raise TypeError(
            f"{where}: message content must be a str or a list of parts, got {type(content).__name__}"
        )
    raise TypeError(
        f"{where} must be a str or a list of message dicts (conversational), got {type(completion).__name__}"
    )


def _check_batch(name: str, completions: Any, answer: Any) -> list[str]:
    if isinstance(completions, (str, bytes)) or not isinstance(completions, Sequence):
        raise TypeError(
            f"{name}: completions must be a list (one entry per completion), got {type(completions).__name__}"
        )
    if isinstance(answer, (str, bytes)) or not isinstance(answer, Sequence):
        raise TypeError(
            f"{name}: answer must be a list with one reference answer per completion (TRL passes the dataset's "
            f"'answer' column repeated per generation), got {type(answer).__name__}"
        )
    if len(answer) != len(completions):
        raise ValueError(
            f"{name}: answer has {len(answer)} entries but completions has {len(completions)}; they must match"
        )
    golds = []
    for i, a in enumerate(answer):
        if isinstance(a, bool) or not isinstance(a, (str, int, float, Fraction, Decimal)):
            raise TypeError(f"{name}: answer[{i}] must be a str or a number, got {type(a).__name__}")
        golds.append(a if isinstance(a, str) else str(a))
    return golds


def _normalize_string(s: str) -> str:
    return " ".join(_clean_latex(s).split())


def _gold_value(gold: str) -> tuple[Fraction | None, str]:
    """Reference answer as (exact number or None, normalized string). A reference written as a full
    solution (with ``\\boxed{}`` or ``####``) is reduced to its final answer first."""
    if _BOXED_RE.search(gold) or "####" in gold:
        extracted = extract_final_answer(gold)
        gold = extracted if extracted is not None else gold
    return parse_number(gold), _normalize_string(gold)


def numeric_match_reward(
    completions: Sequence[Any],
    answer: Sequence[str | int | float],
    *,
    strategy: Strategy = "last",
    **kwargs: Any,
) -> list[float]:
    """Exact/numeric answer matcher as a TRL reward function: 1.0 if the completion's final answer
    equals the reference, else 0.0.

    The final answer is found with :func:`extract_final_answer` (``strategy`` as there). Both sides are
    compared as exact rationals when both parse as numbers (:func:`parse_number`), so ``0.5``,
    ``1/2``, ``\\frac{1}{2}`` and ``.50`` all match ``"1/2"`` and ``1,000`` matches ``1000``; ``0.333``
    does not match ``1/3`` (use :func:`math_verify_reward` for tolerance-based or symbolic checks).
    Otherwise the whitespace-normalized strings must be equal (case-sensitive).

    Args:
        completions: one entry per completion, str or conversational (see :func:`completion_text`).
        answer: reference answers, one per completion (a dataset column named ``answer``).
        strategy: ``"last"``, ``"first"`` or ``"full"`` (see :func:`extract_final_answer`); bind it with
            ``functools.partial`` or the CLI's ``{name: numeric_match, kwargs: {strategy: first}}``.
        **kwargs: the other keyword arguments TRL passes to every reward function (``prompts``,
            ``completion_ids``, ``trainer_state``, ``log_extra``, ``log_metric``, other dataset columns);
            they are accepted by the TRL contract and not used.

    Returns:
        list of floats in {0.0, 1.0}, one per completion.

    Raises:
        TypeError / ValueError: malformed ``completions`` or ``answer`` (lengths, types), unknown ``strategy``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"numeric_match_reward: strategy must be one of {STRATEGIES}, got {strategy!r}")
    golds = _check_batch("numeric_match_reward", completions, answer)
    rewards = []
    for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
        predicted = extract_final_answer(completion_text(completion, index=i), strategy=strategy)
        if predicted is None:
            rewards.append(0.0)
            continue
        gold_number, gold_string = _gold_value(gold)
        pred_number = parse_number(predicted)
        if gold_number is not None and pred_number is not None:
            rewards.append(1.0 if pred_number == gold_number else 0.0)
        else:
            rewards.append(1.0 if _normalize_string(predicted) == gold_string else 0.0)
    return rewards


def _math_verify_timeout(timeout_seconds: int | None) -> int | None:
    # math-verify implements its timeout with signal.alarm, which only works in the main thread.
    if timeout_seconds is None or threading.current_thread() is not threading.main_thread():
        return None
    return timeout_seconds


def math_verify_reward(
    completions: Sequence[Any],
    answer: Sequence[str | int | float],
    *,
    timeout_seconds: int | None = 5,
    **kwargs: Any,
) -> list[float]:
    """``math-verify`` reward as a TRL reward function: 1.0 if ``math_verify.verify(gold, pred)``.

    The reference is parsed as written (``"46"``, ``"\\frac{1}{2}"``, ``"$x^2+1$"``, ``"\\boxed{3}"``;
    LaTeX without ``$`` anchors is retried inside ``$...$``); the completion is parsed with the last
    ``\\boxed{}`` first, then other LaTeX and plain expressions (math-verify's extraction rules).
    A parsing or verification timeout (math-verify's ``signal.alarm``, active only in the main thread;
    elsewhere the check runs without a timeout) or any exception inside math-verify gives ``0.0``. A
    reference that math-verify cannot parse gives ``0.0`` with a warning naming its index.

    Args:
        completions: one entry per completion, str or conversational (see :func:`completion_text`).
        answer: reference answers, one per completion.
        timeout_seconds: per parse/verify call, positive int or None (no timeout).
        **kwargs: the other TRL reward-function keyword arguments; accepted and not used.

    Returns:
        list of floats in {0.0, 1.0}, one per completion.
    """
    if timeout_seconds is not None and (
        isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int) or timeout_seconds <= 0
    ):
        raise ValueError(
            f"math_verify_reward: timeout_seconds must be a positive int or None, got {timeout_seconds!r}"
        )
    golds = _check_batch("math_verify_reward", completions, answer)
    texts = [completion_text(c, index=i) for i, c in enumerate(completions)]

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    timeout = _math_verify_timeout(timeout_seconds)
    pred_config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    gold_cache: dict[str, list] = {}
    rewards = []
    for i, (text, gold) in enumerate(zip(texts, golds, strict=True)):
        try:
            if gold not in gold_cache:
                parsed = parse(gold, parsing_timeout=timeout)
                if not parsed and "$" not in gold:
                    parsed = parse(f"${gold}$", parsing_timeout=timeout)
                gold_cache[gold] = parsed
            gold_parsed = gold_cache[gold]
            if not gold_parsed:
                warnings.warn(
                    f"math_verify_reward: math-verify could not parse answer[{i}] = {gold!r}; reward 0.0",
                    RuntimeWarning,
                    stacklevel=2,
                )
                rewards.append(0.0)
                continue
            pred_parsed = parse(text, extraction_config=pred_config, parsing_timeout=timeout)
            if not pred_parsed:
                rewards.append(0.0)
                continue
            ok = verify(gold_parsed, pred_parsed, timeout_seconds=timeout)
            rewards.append(1.0 if ok else 0.0)
        except (Exception, TimeoutException):
            rewards.append(0.0)
    return rewards
