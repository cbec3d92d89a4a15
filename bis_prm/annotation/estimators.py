"""How many continuations each step prefix gets: full Monte Carlo, or a budget spent where it decides BIS.

An estimator is a small state machine per rollout: `pending()` names the continuations it wants next (a step and
the indices of its continuations), `record()` takes how many of them reached the gold answer, until `done`. The
pipeline batches the pending draws of many rollouts into one backend call per round; a simulation (see
`benchmarks/bench_annotate_budget.py`) answers them from known success probabilities. Continuation `j` of step `i`
has the same seed whatever the estimator, so a cheaper estimator sees a subset of the full run's continuations.

- [`FullMC`] (`"full"`): VisualPRM400K's procedure. Step by step, `K` continuations from each prefix; score =
  correct / K; after the first step scoring 0 the later steps are not sampled (score 0, `num_mc_total` 0).
- [`AdaptiveMC`] (`"adaptive"`): three savings, each aimed at what BIS reads (the hard label `score > 0` of each
  step, the mixture `p_pos` it gives, and the reliability `R` of the positives).
  1. *Outcome first.* The rollout is itself one continuation from each of its prefixes, for free: its own final
     answer counts as one more draw at every step. When it is right, every step already has a correct continuation,
     so every label is positive and only `R` is left to estimate; the last step's score is the outcome itself.
  2. *Adaptive K.* Each step first gets `initial_mc` continuations (4 of 16). A step with a correct one is positive
     whatever the rest would say; only a step with none of them correct gets the other `K - initial_mc`, since that
     is where the label (and the early stop) is decided.
  3. *No sampling for a sure label.* A rollout with a right answer draws its first steps' continuations in one round
     (no early stop can happen); a wrong one is walked step by step as in full MC, up to its first zero.
  The scores of positive steps then rest on about `initial_mc + 1` draws instead of 16: `R` is noisier, which is
  what the benchmark measures (the share of the full-MC BIS subset recovered).
- `"budgeted"`: two phases over the corpus. First [`AdaptiveMC`] with no draws at all for rollouts whose answer is
  right (their labels are all positive, so their BIS is at most `alpha * R <= alpha`, rarely in a BIS subset);
  then, per source, the `refine_ratio` share of rollouts with the highest BIS so far get full Monte Carlo
  ([`FullMC`] with `known=`: the draws already made are reused, only the missing ones are drawn). The likely picks
  so get exactly the scores full MC gives them, the others coarse ones (right labels, rough `R`). Measured in
  `benchmarks/bench_annotate_budget.py`: about 94 % of the full-MC BIS-10 % subset for about 24 % of the
  continuations (`initial_mc=4`, `refine_ratio=0.2`); see `docs/annotate.md`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ESTIMATORS", "AdaptiveMC", "Draw", "FullMC", "make_estimator", "run_estimator"]


@dataclass(frozen=True)
class Draw:
    """Continuations wanted from the prefix ending with step `step` (0-based): indices `first .. first + n - 1`."""

    step: int
    first: int
    n: int


class FullMC:
    """
    VisualPRM400K's full Monte Carlo with early stop (see the module docstring).

    Example:

    ```python
    >>> estimator = FullMC(num_steps=3, num_mc=4)
    >>> estimator.pending()
    [Draw(step=0, first=0, n=4)]
    >>> estimator.record(0, correct=2, n=4); estimator.record(1, correct=0, n=4)
    >>> estimator.done, estimator.counts
    (True, [(2, 4), (0, 4), (0, 0)])

    ```
    """

    def __init__(
        self,
        num_steps: int,
        num_mc: int,
        outcome: bool | None = None,
        known: list[tuple[int, int]] | None = None,
    ):
        self.num_steps, self.num_mc = num_steps, num_mc
        # continuations already drawn (the first `drawn` of each step, `correct` of them right), e.g. by AdaptiveMC:
        # only the others are drawn, and the result is the one full MC would give from scratch
        self._known = list(known) if known is not None else [(0, 0)] * num_steps
        self.counts: list[tuple[int, int]] = [(0, 0)] * num_steps
        self.continuations = 0
        self._next = 0
        self.done = num_steps == 0
        self._advance()

    def pending(self) -> list[Draw]:
        if self.done:
            return []
        drawn = self._known[self._next][1]
        return [Draw(self._next, drawn, self.num_mc - drawn)]

    def record(self, step: int, correct: int, n: int) -> None:
        known_correct, drawn = self._known[step]
        self._known[step] = (known_correct + correct, drawn + n)
        self.continuations += n
        self._advance()

    def _advance(self) -> None:
        while not self.done and self._known[self._next][1] >= self.num_mc:
            correct = self._known[self._next][0]
            self.counts[self._next] = (correct, self.num_mc)
            self._next += 1
            self.done = correct == 0 or self._next == self.num_steps


class AdaptiveMC:
    """
    Outcome-first, adaptive-K Monte Carlo (see the module docstring). `outcome` is whether the rollout's own final
    answer is right; it counts as one draw at every step (`num_mc_total` includes it).

    Example:

    ```python
    >>> estimator = AdaptiveMC(num_steps=3, num_mc=16, outcome=True, initial_mc=4)
    >>> estimator.pending()  # a right answer: every label is positive, R gets 4 draws per step, the last is free
    [Draw(step=0, first=0, n=4), Draw(step=1, first=0, n=4)]
    >>> wrong = AdaptiveMC(num_steps=3, num_mc=16, outcome=False, initial_mc=4)
    >>> wrong.record(0, correct=0, n=4); wrong.pending()  # none of 4 right: the other 12 decide the label
    [Draw(step=0, first=4, n=12)]

    ```
    """

    def __init__(
        self,
        num_steps: int,
        num_mc: int,
        outcome: bool | None = None,
        initial_mc: int = 4,
        right_mc: int | None = None,
    ):
        if outcome is None:
            raise ValueError("AdaptiveMC needs the rollout's own outcome")
        self.num_steps, self.num_mc, self.initial_mc, self.outcome = num_steps, num_mc, initial_mc, outcome
        # continuations per step of a rollout whose answer is right (its labels are known: only R is estimated)
        self.right_mc = initial_mc if right_mc is None else right_mc
        # the rollout itself: one free draw per step
        self.counts: list[tuple[int, int]] = [(int(outcome), 1)] * num_steps
        self._drawn = [0] * num_steps
        self._right = [0] * num_steps
        self._stopped = False
        self._next = 0  # the step a wrong rollout is walking

    @property
    def done(self) -> bool:
        return not self.pending()

    def pending(self) -> list[Draw]:
        last = self.num_steps - 1  # its score is the outcome, free
        if self.outcome:
            return [Draw(step, 0, self.right_mc) for step in range(last) if self._drawn[step] == 0 and self.right_mc]
        if self._stopped or self._next >= last:
            return []
        step = self._next
        if self._drawn[step] == 0:
            return [Draw(step, 0, self.initial_mc)]
        return [Draw(step, self._drawn[step], self.num_mc - self._drawn[step])]

    def record(self, step: int, correct: int, n: int) -> None:
        right, total = self.counts[step]
        self.counts[step] = (right + correct, total + n)
        self._drawn[step] += n
        self._right[step] += correct
        if self.outcome:
            return
        if right + correct > 0:
            self._next = step + 1
        elif self._drawn[step] >= self.num_mc:
            self._stopped = True
            # later steps are not sampled: score 0, as after full MC's early stop
            self.counts[step + 1 :] = [(0, 0)] * (self.num_steps - step - 1)

    @property
    def continuations(self) -> int:
        """Continuations drawn so far (the free ones not counted)."""
        return sum(self._drawn)

    def drawn(self) -> list[tuple[int, int]]:
        """Per step, `(right, drawn)` of the continuations drawn (the free draw not included): what a [`FullMC`]
        refinement reuses."""
        return list(zip(self._right, self._drawn, strict=True))


ESTIMATORS = ("full", "adaptive", "budgeted")


def make_estimator(name: str, num_steps: int, num_mc: int, outcome: bool | None, initial_mc: int = 4):
    """
    The estimator called `name` for a rollout of `num_steps` steps.

    Example:

    ```python
    >>> make_estimator("full", 2, 16, outcome=None).pending()
    [Draw(step=0, first=0, n=16)]

    ```
    """
    if name == "full":
        return FullMC(num_steps, num_mc)
    if name == "adaptive":
        return AdaptiveMC(num_steps, num_mc, outcome=outcome, initial_mc=initial_mc)
    if name == "budgeted":  # the first phase; the likely picks are refined with FullMC(known=...) afterwards
        return AdaptiveMC(num_steps, num_mc, outcome=outcome, initial_mc=initial_mc, right_mc=0)
    raise ValueError(f"unknown estimator {name!r}; choose from {list(ESTIMATORS)}")


def run_estimator(estimator, draw: Callable[[int, range], int]) -> list[tuple[int, int]]:
    """
    Run `estimator` to the end, `draw(step, indices)` giving how many of those continuations are right; returns the
    `(num_mc_correct, num_mc_total)` of every step.

    Example:

    ```python
    >>> run_estimator(FullMC(3, 4), lambda step, indices: [4, 1, 0][step])
    [(4, 4), (1, 4), (0, 4)]

    ```
    """
    while not estimator.done:
        for item in estimator.pending():
            estimator.record(item.step, draw(item.step, range(item.first, item.first + item.n)), item.n)
    return list(estimator.counts)
