"""Speed of the ProcessBench metric with `threshold="auto"` against a loop over the official formula, in the same run.

    python -m benchmarks.bench_processbench_metric [--seed 0]    # from the repository root

Builds predictions the size of ProcessBench (gsm8k 400, math / olympiadbench / omnimath 1,000 problems each, 1 to 20
steps, about 45 % all-correct) with noisy probabilities (lower on and after the first wrong step), runs the
vectorised metric and the loop transcription of `run_eval_prm_rlhflow.py` (tests/oracles/reference_processbench.py)
on the same data, checks they agree and prints both times and the speed-up.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bis_prm.evaluation.metrics import compute_processbench
from tests.oracles.reference_processbench import reference_processbench

SPLITS = {"gsm8k": 400, "math": 1000, "olympiadbench": 1000, "omnimath": 1000}


def make_predictions(seed: int):
    rng = np.random.default_rng(seed)
    predictions, references, splits = [], [], []
    for split, count in SPLITS.items():
        for _ in range(count):
            n = int(rng.integers(1, 21))
            label = -1 if rng.random() < 0.45 else int(rng.integers(n))
            wrong = np.arange(n) >= label if label >= 0 else np.zeros(n, dtype=bool)
            scores = np.clip(0.75 - 0.35 * wrong + rng.normal(0, 0.2, size=n), 0, 1)
            predictions.append(scores.tolist())
            references.append(label)
            splits.append(split)
    return predictions, references, splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    predictions, references, splits = make_predictions(args.seed)

    start = time.perf_counter()
    expected = reference_processbench(predictions, references, splits, threshold="auto")
    loop_seconds = time.perf_counter() - start

    repeats = 5
    start = time.perf_counter()
    for _ in range(repeats):
        actual = compute_processbench(predictions, references, splits, threshold="auto")
    fast_seconds = (time.perf_counter() - start) / repeats

    assert actual["threshold"] == expected["threshold"], (actual["threshold"], expected["threshold"])
    assert abs(actual["average_f1"] - expected["average_f1"]) <= 1e-9
    print(f"problems: {len(predictions)}  steps: {sum(map(len, predictions))}")
    print(f"candidates: {actual['auto_search']['num_candidates']}  threshold: {actual['threshold']}")
    print(f"average F1: {actual['average_f1']:.4f} (loop: {expected['average_f1']:.4f})")
    print(f"loop over the official formula: {loop_seconds:.3f} s")
    print(f"vectorised:                     {fast_seconds * 1e3:.1f} ms (mean of {repeats})")
    print(f"speed-up: {loop_seconds / fast_seconds:.0f}x")


if __name__ == "__main__":
    main()
