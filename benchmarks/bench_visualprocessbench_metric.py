"""Speed of the VisualProcessBench metric with `threshold="auto"` against the reference's loop, in the same run.

    python -m benchmarks.bench_visualprocessbench_metric [--rows 2866] [--seed 0]    # from the repository root

Builds a benchmark the size of VisualProcessBench (2,866 rows, ~27k steps, 5 sources, about 9% neutral and a
realistic correct/wrong mix), scores it with noisy probabilities, runs both implementations on the same data, checks
they agree and prints both times and the speed-up.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bis_prm.evaluation.metrics import compute_visualprocessbench
from tests.oracles.reference_visualprocessbench import reference_visualprocessbench

SOURCES = ["MMMU", "MathVision", "MathVerse", "DynaMath", "WeMath"]


def make_benchmark(rows: int, seed: int):
    rng = np.random.default_rng(seed)
    predictions, references, data_sources = [], [], []
    for _ in range(rows):
        n = int(rng.integers(3, 17))  # 2,866 rows x 9.5 steps ~ 27k steps, as VisualProcessBench
        labels = rng.choice([1, -1, 0], size=n, p=[0.60, 0.31, 0.09])
        scores = np.clip(0.5 + 0.25 * labels + rng.normal(0, 0.25, size=n), 0, 1)
        predictions.append(scores.tolist())
        references.append(labels.tolist())
        data_sources.append(SOURCES[int(rng.integers(len(SOURCES)))])
    return predictions, references, data_sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2866)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    predictions, references, data_sources = make_benchmark(args.rows, args.seed)
    steps = sum(len(labels) for labels in references)

    start = time.perf_counter()
    expected = reference_visualprocessbench(predictions, references, data_sources, threshold="auto")
    loop_seconds = time.perf_counter() - start

    repeats = 5
    start = time.perf_counter()
    for _ in range(repeats):
        actual = compute_visualprocessbench(predictions, references, data_sources, threshold="auto")
    fast_seconds = (time.perf_counter() - start) / repeats

    for key in ("micro_over_sources", "macro_f1_pooled", "f1_positive", "f1_negative", "threshold", "auroc"):
        assert abs(actual[key] - expected[key]) <= 1e-12, (key, actual[key], expected[key])
    print(f"rows: {args.rows}  steps: {steps}  counted steps: {actual['total_steps']}")
    print(f"candidates: {actual['auto_search']['num_candidates']}  threshold: {actual['threshold']}")
    print(f"micro_over_sources: {actual['micro_over_sources']:.6f} (loop: {expected['micro_over_sources']:.6f})")
    print(f"loop reference: {loop_seconds:.3f} s")
    print(f"vectorised:     {fast_seconds * 1e3:.2f} ms (mean of {repeats})")
    print(f"speed-up:       {loop_seconds / fast_seconds:.0f}x")


if __name__ == "__main__":
    main()
