"""A straightforward loop implementation of the reference VisualProcessBench evaluator's metric.

It mirrors the behaviour of the paper's `evaluate_visualprocessbench_prm.py` step by step (pure Python lists, one
pass over all steps per candidate threshold). It is the oracle of `tests/test_visualprocessbench_metric.py` and the
baseline of `bench_visualprocessbench_metric.py`; it is not used by the library.
"""

from __future__ import annotations

import math

from sklearn.metrics import roc_auc_score


def _f1(tp: int, fp: int, fn: int) -> float:
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def macro_f1_binary(y_true: list[int], y_pred: list[int]) -> dict:
    counts = {}
    for positive_class in (1, -1):
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == positive_class and p == positive_class)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != positive_class and p == positive_class)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == positive_class and p != positive_class)
        counts[positive_class] = _f1(tp, fp, fn)
    return {
        "macro_f1": (counts[1] + counts[-1]) / 2,
        "f1_positive": counts[1],
        "f1_negative": counts[-1],
    }


def _micro_over_sources(per_source: dict, threshold: float) -> float:
    weighted_sum, counted = 0.0, 0
    for pairs in per_source.values():
        if not pairs["y"]:
            continue
        y_pred = [1 if s >= threshold else -1 for s in pairs["s"]]
        n = len(pairs["y"])
        weighted_sum += macro_f1_binary(pairs["y"], y_pred)["macro_f1"] * n
        counted += n
    return weighted_sum / counted if counted else 0.0


def reference_visualprocessbench(predictions, references, data_sources, threshold=0.5) -> dict:
    """The reference evaluator's metrics of step scores; `threshold` is a float or `"auto"`."""
    per_source: dict[str, dict[str, list]] = {}
    global_y, global_s = [], []
    for scores, labels, source in zip(predictions, references, data_sources, strict=True):
        for y, s in zip(labels, scores, strict=False):  # the reference truncates to the shorter list
            if y == 0:
                continue
            pairs = per_source.setdefault(source, {"y": [], "s": []})
            pairs["y"].append(1 if y == 1 else -1)
            pairs["s"].append(float(s))
            global_y.append(1 if y == 1 else -1)
            global_s.append(float(s))

    try:
        auroc = float(roc_auc_score([1 if y == 1 else 0 for y in global_y], global_s)) if global_y else None
    except ValueError:  # a single class (older scikit-learn)
        auroc = None
    if auroc is not None and math.isnan(auroc):  # a single class (scikit-learn >= 1.6 warns and returns NaN)
        auroc = None

    auto_search = None
    if threshold == "auto" and global_s:
        candidates = sorted(set(round(x, 4) for x in global_s))
        if len(candidates) > 1000:
            step = max(1, len(candidates) // 1000)
            candidates = candidates[::step]
        best_micro, best_pooled = (-1.0, 0.5), (-1.0, 0.5)
        for t in candidates:
            micro = _micro_over_sources(per_source, t)
            if micro > best_micro[0]:
                best_micro = (micro, t)
            pooled = macro_f1_binary(global_y, [1 if s >= t else -1 for s in global_s])["macro_f1"]
            if pooled > best_pooled[0]:
                best_pooled = (pooled, t)
        threshold = best_micro[1]
        auto_search = {
            "num_candidates": len(candidates),
            "best_threshold_micro_over_sources": {"threshold": best_micro[1], "score": best_micro[0]},
            "best_threshold_pooled_macro": {"threshold": best_pooled[1], "score": best_pooled[0]},
        }
    elif threshold == "auto":
        threshold = 0.5

    metrics_per_source = {}
    all_true, all_pred = [], []
    for source, pairs in per_source.items():
        y_pred = [1 if s >= threshold else -1 for s in pairs["s"]]
        metrics_per_source[source] = {**macro_f1_binary(pairs["y"], y_pred), "steps": len(pairs["y"])}
        all_true.extend(pairs["y"])
        all_pred.extend(y_pred)
    pooled = macro_f1_binary(all_true, all_pred)
    return {
        "micro_over_sources": _micro_over_sources(per_source, threshold),
        "macro_f1_pooled": pooled["macro_f1"],
        "f1_positive": pooled["f1_positive"],
        "f1_negative": pooled["f1_negative"],
        "threshold": threshold,
        "total_steps": len(all_true),
        "auroc": auroc,
        "per_source": metrics_per_source,
        "auto_search": auto_search,
    }
