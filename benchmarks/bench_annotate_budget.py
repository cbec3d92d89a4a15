"""How much of the full-Monte-Carlo BIS subset a cheaper annotation recovers, for what share of the continuations.

A simulated corpus whose continuations have known per-step success probabilities: several sources of different
difficulty, many questions with several rollouts each, 3-12 steps per rollout. A rollout either makes no error or
makes its first error at a uniformly drawn step; the steps before it succeed with a rollout-level probability
(some rollouts are hard: low probabilities, hence low-reliability positives), the steps from it on fail (or, for a
few, succeed rarely: pseudo-positives). The rollout's own final answer is a draw from its last step's probability.

Every estimator sees the same continuations (continuation `j` of step `i` of a rollout is one uniform draw,
whatever the estimator; the pipeline gives it the same seed). Each corpus is scored and selected with the library's
BIS (`bis_prm.data.selection.select_subset`, alpha 0.2, 10 % per source); the script prints, against full MC with
K = 16: the share of the full-MC subset that the cheaper corpus selects, and the share of continuations it spent.
Baselines in the same run: full MC with a smaller K everywhere, a second full-MC run with other seeds (how well
full MC agrees with itself), and a random 10 %.

    python -m benchmarks.bench_annotate_budget                      # 4 sources x 2 000 rollouts
    python -m benchmarks.bench_annotate_budget --rollouts 500       # quick
"""

from __future__ import annotations

import argparse

import datasets
import numpy as np

from bis_prm.annotation.estimators import AdaptiveMC, FullMC, run_estimator
from bis_prm.data.selection import select_subset

K = 16
# (name, share of rollouts with an error, share of hard rollouts)
SOURCES = (("easy", 0.25, 0.05), ("medium", 0.4, 0.08), ("hard", 0.6, 0.15), ("perception", 0.45, 0.25))


def simulate(rollouts_per_source: int, seed: int) -> list[dict]:
    """Rollouts with their per-step success probabilities and own outcome (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = []
    for source, error_rate, hard_rate in SOURCES:
        for _ in range(rollouts_per_source):
            num_steps = int(rng.integers(3, 13))
            base = rng.beta(1.5, 6) if rng.random() < hard_rate else rng.beta(6, 2)
            first_error = int(rng.integers(0, num_steps)) if rng.random() < error_rate else num_steps
            p = np.clip(base + rng.normal(0, 0.05, num_steps), 0.01, 1.0)
            wrong = np.arange(num_steps) >= first_error
            pseudo = rng.random(num_steps) < 0.15
            p[wrong] = np.where(pseudo[wrong], rng.uniform(0.01, 0.15, wrong.sum()), 0.0)
            if first_error == num_steps:  # the last step holds the stated answer: right unless the answer is off
                p[-1] = max(p[-1], 0.95)
            outcome = bool(rng.random() < p[-1])
            out.append({"source": source, "p": p, "outcome": outcome})
    return out


def annotate(rollouts: list[dict], make, uniforms: list[np.ndarray]) -> tuple[list[list[float]], int]:
    """MC scores of every rollout with the estimator `make(rollout)` and the continuations spent."""
    scores, spent = [], 0
    for rollout, u in zip(rollouts, uniforms, strict=True):
        estimator = make(rollout)
        counts = run_estimator(estimator, lambda step, idx, u=u, p=rollout["p"]: int((u[step, idx] < p[step]).sum()))
        scores.append([c / t if t else 0.0 for c, t in counts])
        spent += estimator.continuations
    return scores, spent


def budgeted(rollouts, uniforms, initial_mc: int, refine: float, ratio: float, alpha: float, right_mc: int = 0):
    """Adaptive for every rollout, then full MC (reusing the draws made) for the `refine` share per source with the
    highest adaptive BIS."""
    estimators = [
        AdaptiveMC(len(r["p"]), K, outcome=r["outcome"], initial_mc=initial_mc, right_mc=right_mc) for r in rollouts
    ]
    scores, spent = [], 0
    for rollout, u, estimator in zip(rollouts, uniforms, estimators, strict=True):
        counts = run_estimator(estimator, lambda step, idx, u=u, p=rollout["p"]: int((u[step, idx] < p[step]).sum()))
        scores.append([c / t if t else 0.0 for c, t in counts])
        spent += estimator.continuations
    for index in bis_subset(rollouts, scores, refine, alpha):
        rollout, u = rollouts[index], uniforms[index]
        full = FullMC(len(rollout["p"]), K, known=estimators[index].drawn())
        counts = run_estimator(full, lambda step, idx, u=u, p=rollout["p"]: int((u[step, idx] < p[step]).sum()))
        scores[index] = [c / t if t else 0.0 for c, t in counts]
        spent += full.continuations
    return scores, spent


def bis_subset(rollouts: list[dict], scores: list[list[float]], ratio: float, alpha: float) -> set[int]:
    ds = datasets.Dataset.from_dict(
        {"source": [r["source"] for r in rollouts], "mc_scores": scores, "row": list(range(len(rollouts)))}
    )
    return set(select_subset(ds, method="bis", ratio=ratio, alpha=alpha)["row"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=2000, help="Rollouts per source (default: 2000).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=0.2)
    args = parser.parse_args()
    datasets.disable_progress_bars()

    rollouts = simulate(args.rollouts, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    uniforms = [rng.random((len(r["p"]), K)) for r in rollouts]
    other = [rng.random((len(r["p"]), K)) for r in rollouts]

    full_scores, full_spent = annotate(rollouts, lambda r: FullMC(len(r["p"]), K), uniforms)
    reference = bis_subset(rollouts, full_scores, args.ratio, args.alpha)
    rows = []

    def measure(name: str, scores: list[list[float]], spent: int) -> None:
        chosen = bis_subset(rollouts, scores, args.ratio, args.alpha)
        rows.append((name, len(chosen & reference) / len(reference), spent / full_spent))

    measure("full MC, K=16 (reference)", full_scores, full_spent)
    measure("full MC, K=16, other seeds", *annotate(rollouts, lambda r: FullMC(len(r["p"]), K), other))
    for k in (4, 8):
        measure(f"full MC, K={k}", *annotate(rollouts, lambda r, k=k: FullMC(len(r["p"]), k), uniforms))
    for k0 in (2, 4, 6):
        make = lambda r, k0=k0: AdaptiveMC(len(r["p"]), K, outcome=r["outcome"], initial_mc=k0)  # noqa: E731
        measure(f"adaptive, initial_mc={k0}", *annotate(rollouts, make, uniforms))
    for k0, refine, right in ((4, 0.2, 4), (2, 0.2, 0), (4, 0.2, 0), (4, 0.3, 0), (6, 0.2, 0), (4, 0.15, 0)):
        scores, spent = budgeted(rollouts, uniforms, k0, refine, args.ratio, args.alpha, right)
        measure(f"budgeted, k0={k0}, right={right}, refine {refine:.0%}", scores, spent)
    random_pick = np.random.default_rng(args.seed + 2)
    by_source = {}
    for index, rollout in enumerate(rollouts):
        by_source.setdefault(rollout["source"], []).append(index)
    chosen = {
        int(i) for rows_ in by_source.values() for i in random_pick.choice(rows_, int(len(rows_) * args.ratio), False)
    }
    rows.append(("random 10 % (no MC)", len(chosen & reference) / len(reference), 0.0))

    mixed = sum(0 < sum(s > 0 for s in score) < len(score) for score in full_scores) / len(rollouts)
    print(
        f"{len(rollouts)} rollouts over {len(SOURCES)} sources ({mixed:.1%} mixed under full MC), "
        f"full MC K={K}: {full_spent:,} continuations; BIS alpha={args.alpha}, {args.ratio:.0%} per source "
        f"({len(reference)} rollouts)"
    )
    print(f"{'corpus':32s} {'full-MC subset recovered':>25s} {'continuations spent':>20s}")
    for name, recovered, spent in rows:
        print(f"{name:32s} {recovered:25.1%} {spent:20.1%}")


if __name__ == "__main__":
    main()
