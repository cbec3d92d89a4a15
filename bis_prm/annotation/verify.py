"""Checking a completed solution's final answer against the gold answer.

The gold answer of a question is parsed once, when the question is read (an answer no checker can read skips the
question, with its line); each continuation is then checked against it. Checkers:

- `choice`: option letters A-E (`"B"`, `"(B)"`, `"B."`).
- `numeric`: numbers, equal within a relative tolerance (`1e-6` by default; `"1,000"` and `"12%"` read as numbers).
- `math`: [math-verify](https://github.com/huggingface/Math-Verify) (LaTeX, expressions, sets, intervals), gold first.
  Its timeouts use `signal.alarm`, which only works in the main thread: they are disabled here
  (`parsing_timeout=None`, `timeout_seconds=None`) and the answers handed to it are capped at `MAX_ANSWER_CHARS`, so
  that a pathological expression cannot hang a worker thread of an engine.
- `auto` (default): `choice` for a gold letter, `numeric` for a gold number, `math` otherwise.
- `module:function`: a user callable `function(solution: str, answer: str) -> bool`, imported once.

The final answer of a solution is what follows its last "answer is" (`The answer is 42.`), else its last
`\\boxed{...}`, else the whole text (math-verify and the numeric checker then look for the last expression).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_ANSWER_CHARS", "AnswerChecker", "Gold", "final_answer"]

MAX_ANSWER_CHARS = 300
_ANSWER_IS = re.compile(r"answer is\s*[:：]?", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_LETTER = re.compile(r"^\(?([A-E])\)?(?:[.:)\s]|$)")
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def final_answer(solution: str) -> str:
    r"""
    The final answer a solution states: after its last "answer is", else its last `\boxed{}`, else its last line.

    Example:

    ```python
    >>> final_answer("2 + 3 = 5.\n\nThe answer is 5.")
    '5'
    >>> final_answer("So $x = \\boxed{\\frac{1}{2}}$")
    '\\frac{1}{2}'

    ```
    """
    matches = list(_ANSWER_IS.finditer(solution))
    if matches and solution[matches[-1].end() :].strip():
        answer = solution[matches[-1].end() :].strip().splitlines()[0]
    else:
        boxed = _BOXED.findall(solution)
        answer = boxed[-1] if boxed else (solution.strip().splitlines() or [""])[-1]
    return answer.strip().removesuffix(".").strip()[:MAX_ANSWER_CHARS]


def _number(text: str) -> float | None:
    match = _NUMBER.search(text.replace(" ", ""))
    if match is None:
        return None
    try:
        return float(match.group().replace(",", ""))
    except ValueError:
        return None


def _letter(text: str) -> str | None:
    match = _LETTER.match(text.strip())
    return match.group(1) if match else None


@dataclass(frozen=True)
class Gold:
    """A parsed gold answer: the checker `kind` that reads it and its `value` for that checker."""

    kind: str
    value: Any
    text: str


class AnswerChecker:
    """
    Parse gold answers and check solutions against them (see the module docstring for the kinds).

    Args:
        kind (`str`, *optional*, defaults to `"auto"`):
            `"auto"`, `"choice"`, `"numeric"`, `"math"` or `"module:function"`.
        tolerance (`float`, *optional*, defaults to `1e-6`):
            Relative tolerance of the numeric checker.

    Example:

    ```python
    >>> checker = AnswerChecker()
    >>> gold = checker.parse_gold("12")
    >>> checker("3 * 4 = 12.\\n\\nThe answer is 12.", gold), checker("The answer is 13.", gold)
    (True, False)
    >>> checker("The answer is (C).", checker.parse_gold("C"))
    True

    ```
    """

    KINDS = ("auto", "choice", "numeric", "math")

    def __init__(self, kind: str = "auto", tolerance: float = 1e-6):
        self.kind = kind
        self.tolerance = tolerance
        self._function: Callable[[str, str], bool] | None = None
        if kind not in self.KINDS:
            module, _, name = kind.partition(":")
            if not module or not name:
                raise ValueError(f"verifier must be one of {list(self.KINDS)} or 'module:function', got {kind!r}")
            try:
                self._function = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as error:
                raise ValueError(f"cannot import the verifier {kind!r}: {error}") from None
            if not callable(self._function):
                raise ValueError(f"the verifier {kind!r} is not callable")

    def parse_gold(self, answer: str) -> Gold:
        """The gold answer parsed for its checker; a `ValueError` saying why when it cannot be read."""
        text = answer.strip()
        if not text:
            raise ValueError("the answer is empty")
        if self._function is not None:
            return Gold("function", text, text)
        if self.kind in ("auto", "choice") and _letter(text) and len(text) <= 4:
            return Gold("choice", _letter(text), text)
        if self.kind == "choice":
            raise ValueError(f"{text[:40]!r} is not an option letter A-E")
        number = _number(text) if _NUMBER.fullmatch(text.replace(",", "").rstrip("%").strip()) else None
        if self.kind in ("auto", "numeric") and number is not None:
            return Gold("numeric", number, text)
        if self.kind == "numeric":
            raise ValueError(f"{text[:40]!r} is not a number")
        parsed = _math_parse(text[:MAX_ANSWER_CHARS])
        if not parsed:
            raise ValueError(f"math-verify cannot parse {text[:40]!r}")
        return Gold("math", parsed, text)

    def __call__(self, solution: str, gold: Gold) -> bool:
        """Whether `solution`'s final answer matches `gold`."""
        if gold.kind == "function":
            return bool(self._function(solution, gold.value))
        answer = final_answer(solution)
        if gold.kind == "choice":
            return _letter(answer) == gold.value
        if gold.kind == "numeric":
            value = _number(answer)
            return value is not None and math.isclose(
                value, gold.value, rel_tol=self.tolerance, abs_tol=self.tolerance
            )
        from math_verify import verify

        predicted = _math_parse(answer)
        return bool(predicted) and bool(verify(gold.value, predicted, timeout_seconds=None))


def _math_parse(text: str) -> list:
    from math_verify import parse

    # parsing_timeout=None: no signal.alarm, so this works in any thread (see the module docstring). A bare
    # expression is read as LaTeX first: outside $...$ math-verify's expression extraction reads `1+x^2` as 1
    candidates = [text] if "$" in text or "\\boxed" in text else [f"${text}$", text]
    for candidate in candidates:
        parsed = parse(candidate, parsing_timeout=None)
        if parsed:
            return parsed
    return []
