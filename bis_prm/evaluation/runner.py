"""`bis-prm eval`: score every step of a VisualProcessBench-layout benchmark with a PRM and write its metrics.

Runs on one process or under `accelerate launch --num_processes N`: the rows are split between the processes, the
scores gathered on every rank, and rank 0 computes the metrics and writes the files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from bis_prm.evaluation.metrics import compute_visualprocessbench, select_threshold
from bis_prm.evaluation.visualprocessbench import DATA_SOURCES, load_visualprocessbench


@dataclass
class EvalConfig:
    """
    Configuration of [`evaluate_prm`].

    Parameters:
        model (`str`):
            A saved PRM or a base VLM checkpoint (see [`~bis_prm.load_prm`]).
        benchmark (`str`):
            A directory with `test.jsonl` and images, a JSONL file, or a Hub dataset repo id.
        output_dir (`str`):
            Where `predictions.jsonl`, `metrics.json`, `metrics.md` and `plots.png` are written.
        batch_size (`int`, *optional*, defaults to `8`):
            Rows per forward pass.
        threshold (`float` or `str`, *optional*, defaults to `0.5`):
            A float, or `"auto"` to tune it on the evaluated predictions as the reference evaluator does.
        threshold_from (`str`, *optional*):
            A `predictions.jsonl` of another split (e.g. a dev split) to tune the threshold on; overrides `threshold`.
        max_rows (`int`, *optional*):
            Evaluate only the first rows of the file.
        max_images (`int`, *optional*):
            Tile rows with more images into one grid (at most 3 columns) for models that take a single image.
        split (`str`, *optional*, defaults to `"test"`):
            The benchmark's JSONL stem.
        any_source (`bool`, *optional*, defaults to `False`):
            Accept data sources other than the five of VisualProcessBench.
        strict (`bool`, *optional*, defaults to `False`):
            Fail on the first unusable row instead of skipping and counting it.
    """

    model: str
    benchmark: str
    output_dir: str
    batch_size: int = 8
    threshold: float | str = 0.5
    threshold_from: str | None = None
    max_rows: int | None = None
    max_images: int | None = None
    split: str = "test"
    any_source: bool = False
    strict: bool = False


def read_predictions(path: str | os.PathLike) -> tuple[list, list, list]:
    """Read a `predictions.jsonl` written by `bis-prm eval` into (scores, references, data_sources)."""
    predictions, references, data_sources = [], [], []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                predictions.append(row["scores"])
                references.append(row["references"])
                data_sources.append(row["data_source"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}, line {line_number}: not a bis-prm predictions row ({err}).") from None
    return predictions, references, data_sources


def _choose_threshold(config: EvalConfig) -> tuple[float | str, str | None]:
    if config.threshold_from is not None:
        threshold = select_threshold(*read_predictions(config.threshold_from))
        return threshold, f"auto (separate split: {config.threshold_from})"
    return config.threshold, None


def metrics_table(metrics: dict) -> str:
    """The per-source Markdown table of a metrics dict (percentages, as in the papers)."""
    lines = [
        f"Threshold: {metrics['threshold']:.4f} ({metrics['threshold_source']}); "
        f"counted steps: {metrics['total_steps']}",
        "",
        "| source | steps | macro-F1 | F1 (correct) | F1 (wrong) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for source, m in metrics["per_source"].items():
        lines.append(
            f"| {source} | {m['steps']} | {100 * m['macro_f1']:.2f} | {100 * m['f1_positive']:.2f} "
            f"| {100 * m['f1_negative']:.2f} |"
        )
    overall = 100 * metrics["micro_over_sources"]
    lines.append(f"| **Overall (micro over sources)** | {metrics['total_steps']} | **{overall:.2f}** | | |")
    lines.append(
        f"| Pooled | {metrics['total_steps']} | {100 * metrics['macro_f1_pooled']:.2f} "
        f"| {100 * metrics['f1_positive']:.2f} | {100 * metrics['f1_negative']:.2f} |"
    )
    auroc = "n/a" if metrics["auroc"] is None else f"{metrics['auroc']:.4f}"
    skipped = ", ".join(f"{reason}: {n['count']}" for reason, n in metrics["skipped"].items()) or "none"
    lines += ["", f"AUROC: {auroc}. Skipped rows: {skipped}."]
    return "\n".join(lines) + "\n"


def plot_metrics(metrics: dict, predictions: list[dict], path: str | os.PathLike) -> None:
    """Per-source F1 bars and the score histograms of correct / wrong / neutral steps, saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, (bars, histogram) = plt.subplots(1, 2, figsize=(12, 4.5))
    sources = list(metrics["per_source"])
    x = np.arange(len(sources))
    for offset, key, label in [
        (-0.25, "macro_f1", "macro-F1"),
        (0, "f1_positive", "F1 correct"),
        (0.25, "f1_negative", "F1 wrong"),
    ]:
        bars.bar(x + offset, [metrics["per_source"][s][key] for s in sources], width=0.25, label=label)
    bars.axhline(metrics["micro_over_sources"], color="black", linestyle="--", label="overall")
    bars.set_xticks(x, sources, rotation=20)
    bars.set_ylim(0, 1)
    bars.set_title(f"F1 per source (threshold {metrics['threshold']:.3f})")
    bars.legend(fontsize="small")
    scores = np.array([s for row in predictions for s in row["scores"]], dtype=float)
    labels = np.array([y for row in predictions for y in row["references"]], dtype=int)
    for value, name in [(1, "correct"), (-1, "wrong"), (0, "neutral")]:
        if (labels == value).any():
            histogram.hist(scores[labels == value], bins=20, range=(0, 1), alpha=0.5, label=name)
    histogram.axvline(metrics["threshold"], color="black", linestyle="--")
    histogram.set_title("Step scores by label")
    histogram.set_xlabel("P(correct)")
    histogram.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def evaluate_prm(config: EvalConfig) -> dict | None:
    """
    Score a benchmark with a PRM and write its predictions, metrics, Markdown table and plots.

    Args:
        config ([`EvalConfig`]): what to evaluate and where to write.

    Returns:
        `dict` or `None`: the metrics on the main process (also written to `metrics.json`), `None` on the others.

    Example:
        >>> metrics = evaluate_prm(EvalConfig(model="prm", benchmark="datasets/VisualProcessBench", output_dir="out"))
        >>> metrics["micro_over_sources"]
        0.62
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from bis_prm.model.inference import score_steps
    from bis_prm.model.modeling_prm import load_prm

    state = PartialState()
    # tune first: a bad --threshold-from file fails before the (long) scoring
    threshold, threshold_source = _choose_threshold(config)
    benchmark = load_visualprocessbench(
        config.benchmark,
        split=config.split,
        sources=None if config.any_source else DATA_SOURCES,
        strict=config.strict,
        max_rows=config.max_rows,
    )
    if state.is_main_process:
        print(
            f"{benchmark.path}: {len(benchmark.rows)} rows, {benchmark.num_steps} steps; "
            f"skipped rows: {benchmark.skip_counts() or 'none'}"
        )
    model, processor = load_prm(config.model)
    model.to(state.device).eval()

    with state.split_between_processes(benchmark.rows) as shard:
        examples = [{"image": row["image"], "question": row["question"], "steps": row["steps"]} for row in shard]
        scores = score_steps(
            model,
            processor,
            examples,
            batch_size=config.batch_size,
            progress=state.is_main_process,
            max_images=config.max_images,
        )
        scored = [(row["index"], row_scores) for row, row_scores in zip(shard, scores, strict=True)]
    scored = dict(gather_object(scored)) if state.num_processes > 1 else dict(scored)
    if not state.is_main_process:
        return None

    predictions = [
        {
            "index": row["index"],
            "data_source": row["data_source"],
            "scores": scored[row["index"]],
            "references": row["labels"],
        }
        for row in benchmark.rows
    ]
    metrics = compute_visualprocessbench(
        [row["scores"] for row in predictions],
        [row["references"] for row in predictions],
        [row["data_source"] for row in predictions],
        threshold=threshold,
    )
    metrics["threshold_source"] = threshold_source or metrics["threshold_source"]
    metrics["rows"] = len(predictions)
    metrics["skipped"] = {reason: {"count": len(rows), "rows": rows} for reason, rows in benchmark.skipped.items()}
    metrics["benchmark"] = str(benchmark.path)
    metrics["model"] = str(config.model)

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in predictions)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    table = metrics_table(metrics)
    (output_dir / "metrics.md").write_text(table, encoding="utf-8")
    plot_metrics(metrics, predictions, output_dir / "plots.png")
    print(table)
    return metrics
