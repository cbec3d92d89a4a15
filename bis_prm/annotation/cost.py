"""What an annotation run costs: counted while it runs, and estimated before it starts (`--dry-run`).

The estimate (written out in `docs/annotate.md`): with `Q` questions, `N` rollouts each (1 for a row with its own
response), `T` the response budget (`max_new_tokens`, the policy assumed to use it), `L` steps per response (counted
for rows with a response; `expected_steps` otherwise), `P` the prompt's tokens and `p_i` the tokens of the prefix
ending with step `i` (counted for rows with a response, `i * T / L` otherwise), full Monte Carlo without early stop
(an upper bound: every early stop lowers it) generates and reads

    generated = sum over questions of  N * T  (rollouts, for rows without a response)
              + sum over rollouts  of  K * sum_{i=1..L} (T - p_i)          (about K * T * (L - 1) / 2)
    prompt    = sum over questions of  N * P
              + sum over rollouts  of  K * sum_{i=1..L} (P + p_i)

A continuation from a prefix of `p_i` tokens may generate `T - p_i` tokens: a completed solution has the budget of
a rollout. With a prefix cache (vLLM's `enable_prefix_caching`) the K continuations of a prefix, and consecutive
prefixes of a rollout, share their prompt: what is computed is about `P + T` per rollout, the rest is read from the
cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from .backend import Generation
from .config import AnnotateConfig
from .questions import Question, policy_prompt

__all__ = ["CostCounter", "CostEstimate", "estimate_cost", "format_cost"]


@dataclass
class CostCounter:
    """Tokens and continuations spent, counted from the backend's [`Generation`]s."""

    rollouts: int = 0
    continuations: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    wall_seconds: float = 0.0

    def add_rollouts(self, generation: Generation) -> None:
        self.rollouts += len(generation.texts)
        self._add_tokens(generation)

    def add_continuations(self, generation: Generation) -> None:
        self.continuations += len(generation.texts)
        self._add_tokens(generation)

    def _add_tokens(self, generation: Generation) -> None:
        self.generated_tokens += generation.generated_tokens
        self.prompt_tokens += generation.prompt_tokens
        self.cached_prompt_tokens += generation.cached_tokens

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class CostEstimate:
    """The dry-run estimate: rollouts, continuations, generated and prompt tokens (see the module docstring)."""

    questions: int
    rollouts: int
    continuations: int
    generated_tokens: int
    prompt_tokens: int


def estimate_cost(
    questions: Sequence[Question],
    config: AnnotateConfig,
    count_tokens: Callable[[str], int] | None = None,
    expected_steps: int = 6,
    count_prompt: Callable[[str], int] | None = None,
) -> CostEstimate:
    """
    The upper-bound cost of annotating `questions` with full Monte Carlo (the formula of the module docstring).

    Args:
        questions (`Sequence[Question]`): What would be annotated.
        config ([`AnnotateConfig`]): N, K, the budget, the separator.
        count_tokens (`Callable[[str], int]`, *optional*): Tokens of a text (the policy's tokenizer, chat template
            applied to prompts); defaults to characters / 4.
        expected_steps (`int`, *optional*, defaults to `6`): L for questions without a response.
        count_prompt (`Callable[[str], int]`, *optional*): Tokens of a prompt as the policy is fed it (its chat
            template applied); defaults to `count_tokens`.

    Example:

    ```python
    >>> from bis_prm.annotation.verify import AnswerChecker
    >>> q = Question("id", "s", 1, "1 + 1?", "2", AnswerChecker().parse_gold("2"))
    >>> config = AnnotateConfig("q.jsonl", "out", num_rollouts=4, num_mc=16, max_new_tokens=100, instruction="")
    >>> estimate = estimate_cost([q], config, count_tokens=lambda text: len(text.split()), expected_steps=5)
    >>> estimate.generated_tokens  # 4 * 100 + 4 * 16 * (80 + 60 + 40 + 20 + 0)
    13200

    ```
    """
    count_tokens = count_tokens or (lambda text: max(1, len(text) // 4))
    count_prompt = count_prompt or count_tokens
    T, K = config.max_new_tokens, config.num_mc
    rollouts = continuations = generated = prompt = 0
    for q in questions:
        P = count_prompt(policy_prompt(q.question, len(q.images), config.instruction))
        if q.response is None and q.steps is None:
            n, L = config.num_rollouts, expected_steps
            prefix_tokens = [i * T // L for i in range(1, L + 1)]
            generated += n * T
            prompt += n * P
        else:
            from bis_prm.data.steps import split_steps

            from .pipeline import step_prefixes  # the pipeline counts its cost here

            steps = q.steps if q.steps is not None else split_steps(q.response, config.separator, config.max_steps)
            n, L = 1, len(steps)
            prefix_tokens = [count_tokens(prefix) for prefix in step_prefixes(steps, config.separator)]
        rollouts += n
        continuations += n * K * L
        generated += n * K * sum(max(0, T - p) for p in prefix_tokens)
        prompt += n * K * sum(P + p for p in prefix_tokens)
    return CostEstimate(len(questions), rollouts, continuations, generated, prompt)


def format_cost(cost: dict[str, float], title: str = "Cost") -> str:
    """
    A few lines for the terminal.

    Example:

    ```python
    >>> print(format_cost({"continuations": 64, "generated_tokens": 1000, "prompt_tokens": 3000,
    ...                    "cached_prompt_tokens": 2000, "wall_seconds": 1.5}))
    Cost: 64 continuations, 1,000 generated tokens, 3,000 prompt tokens (1,000 computed, 2,000 cached), 1.5 s

    ```
    """
    prompt, cached = int(cost.get("prompt_tokens", 0)), int(cost.get("cached_prompt_tokens", 0))
    parts = [
        f"{int(cost.get('continuations', 0)):,} continuations",
        f"{int(cost.get('generated_tokens', 0)):,} generated tokens",
        f"{prompt:,} prompt tokens ({prompt - cached:,} computed, {cached:,} cached)",
    ]
    if "wall_seconds" in cost:
        parts.append(f"{cost['wall_seconds']:.1f} s")
    return f"{title}: " + ", ".join(parts)
