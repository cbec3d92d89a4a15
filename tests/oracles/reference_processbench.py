"""A transcription of the official ProcessBench evaluation (QwenLM/ProcessBench, `code/run_eval_prm_rlhflow.py`).

The official script asks the PRM about each step in turn and stops at the first step it does not accept
(`return sdx`, -1 when it accepts them all); per config (split) it then computes, with NumPy as written there:

    data1 = [e for e in res_data if e['label'] != -1]
    data2 = [e for e in res_data if e['label'] == -1]
    acc1 = np.mean([e['match'] for e in data1]) * 100
    acc2 = np.mean([e['match'] for e in data2]) * 100
    f1 = 2 * acc1 * acc2 / (acc1 + acc2)

A scored PRM "does not accept" a step whose score is below the threshold. The script has no average; the paper's
"Avg. F1" is the mean of the splits' F1, taken here over the splits with both kinds of problems, a split whose two
accuracies are both 0 counting 0 (the harmonic mean's limit, where NumPy divides 0 by 0). Loops and lists only; the
oracle of `tests/test_processbench.py`, not used by the library.
"""

from __future__ import annotations

import warnings

import numpy as np


def single_process(scores: list[float], threshold: float) -> int:
    for sdx, score in enumerate(scores):
        judgment = score >= threshold
        if not judgment:
            return sdx
    return -1


def reference_split(predictions, labels) -> dict:
    res_data = [{"prediction": p, "label": y, "match": p == y} for p, y in zip(predictions, labels, strict=True)]
    data1 = [e for e in res_data if e["label"] != -1]
    data2 = [e for e in res_data if e["label"] == -1]
    with warnings.catch_warnings():  # np.mean of an empty list and 0 / 0 warn and give nan, as in the official run
        warnings.simplefilter("ignore", RuntimeWarning)
        acc1 = np.mean([e["match"] for e in data1]) * 100
        acc2 = np.mean([e["match"] for e in data2]) * 100
        f1 = 2 * acc1 * acc2 / (acc1 + acc2)
    return {"error_acc": float(acc1), "correct_acc": float(acc2), "f1": float(f1)}


def reference_processbench(scores, labels, splits, threshold=0.5) -> dict:
    """Per split (in order of first appearance) the official numbers, nan where NumPy gives nan, and the average
    F1 over the splits whose F1 is a number; `threshold="auto"` tries every candidate in a loop."""
    if threshold == "auto":
        candidates = sorted(set(round(s, 4) for row in scores for s in row))
        if len(candidates) > 1000:
            candidates = candidates[:: max(1, len(candidates) // 1000)]
        best, best_threshold = None, 0.5
        for t in candidates:
            average = reference_processbench(scores, labels, splits, t)["average_f1"]
            if average is not None and (best is None or average > best):
                best, best_threshold = average, t
        return {**reference_processbench(scores, labels, splits, best_threshold), "threshold": best_threshold}
    configs = []
    for split in splits:
        if split not in configs:
            configs.append(split)
    per_split = {}
    for config in configs:
        rows = [k for k, split in enumerate(splits) if split == config]
        predictions = [single_process(scores[k], threshold) for k in rows]
        per_split[config] = reference_split(predictions, [labels[k] for k in rows])
    f1s = [
        0.0 if np.isnan(m["f1"]) else m["f1"]
        for m in per_split.values()
        if not (np.isnan(m["error_acc"]) or np.isnan(m["correct_acc"]))
    ]
    return {
        "per_split": per_split,
        "average_f1": sum(f1s) / len(f1s) if f1s else None,
        "predictions": [single_process(row, threshold) for row in scores],
        "threshold": threshold,
    }
