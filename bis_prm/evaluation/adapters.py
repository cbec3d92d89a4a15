"""The benchmarks `bis-prm eval` knows: each is a small adapter around a reader and a metric.

An adapter says how to load its benchmark (a [`~bis_prm.evaluation.benchmark.Benchmark`] whose rows
[`~bis_prm.model.inference.StepScorer`] scores), what a `predictions.jsonl` row holds, how to compute the metrics from
those rows, how to tune a threshold on another split's `predictions.jsonl`, and its Markdown table and plot. The
runner does the rest (batching, processes, skipped rows, files), the same way for every benchmark. See
`docs/benchmarks.md` to add one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bis_prm.evaluation.benchmark import Benchmark
from bis_prm.evaluation.visualprocessbench import display_source

__all__ = [
    "ADAPTERS",
    "BenchmarkAdapter",
    "PRMBenchAdapter",
    "ProcessBenchAdapter",
    "VisualProcessBenchAdapter",
    "detect_benchmark_type",
    "read_predictions",
]


def read_predictions(path: str | os.PathLike, fields: tuple[str, ...] = ("scores", "references", "data_source")):
    """
    Read the columns `fields` of a `predictions.jsonl` written by `bis-prm eval` (by default those of
    VisualProcessBench: scores, references, data sources), one list per field.

    Example:

    ```python
    >>> scores, labels, splits = read_predictions(  # doctest: +SKIP
    ...     "out/predictions.jsonl", ("scores", "label", "split")
    ... )

    ```
    """
    columns: list[list] = [[] for _ in fields]
    with open(path, encoding="utf-8-sig") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                values = [row[name] for name in fields]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}, line {line_number}: not a bis-prm predictions row ({err}).") from None
            for column, value in zip(columns, values, strict=True):
                column.append(value)
    return tuple(columns)


def _lines_text(entry: dict, limit: int = 20) -> str:
    files = entry.get("files") or [None] * len(entry["lines"])
    lines = [str(line) if file is None else f"{file}:{line}" for file, line in zip(files, entry["lines"], strict=True)]
    shown = ", ".join(lines[:limit])
    return shown + (f", ... ({len(lines) - limit} more)" if len(lines) > limit else "")


def skipped_text(metrics: dict, filter_name: str) -> list[str]:
    """The Markdown lines listing the skipped rows by reason and line, and the rows a filter left out."""
    skipped = metrics["skipped"]
    lines = []
    if skipped:
        total = sum(entry["count"] for entry in skipped.values())
        where = "files" if any("files" in entry for entry in skipped.values()) else "the JSONL file"
        lines += ["", f"**Skipped rows: {total}** (not in the metrics; 1-based lines of {where}):", ""]
        lines += [f"- {reason}: {entry['count']} (lines {_lines_text(entry)})" for reason, entry in skipped.items()]
    else:
        lines += ["", "Skipped rows: none."]
    excluded = metrics.get("excluded_by_sources") or {}
    if excluded:
        lines.append(
            f"Rows left out by the `{filter_name}` filter: {sum(excluded.values())} "
            f"({', '.join(f'{name}: {n}' for name, n in excluded.items())})."
        )
    return lines


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


class BenchmarkAdapter:
    """
    What the runner needs to know of a benchmark. Subclasses set `name`, `filter_name` (what `sources` filters) and
    `fields` (the `predictions.jsonl` columns that `compute` and `tune` read), and implement the methods.
    """

    name: str = ""
    filter_name: str = "sources"
    fields: tuple[str, ...] = ()
    auto_threshold: bool = True

    def load(self, config, step_token: str | None) -> Benchmark:
        """The benchmark of `config` (an [`~bis_prm.evaluation.runner.EvalConfig`])."""
        raise NotImplementedError

    def prediction(self, row: dict, scores: list[float]) -> dict:
        """The `predictions.jsonl` row of a scored benchmark row."""
        raise NotImplementedError

    def compute(self, predictions: list[dict], threshold: float | str) -> dict:
        """The metrics of the prediction rows (it may add fields to them, e.g. a predicted index)."""
        raise NotImplementedError

    def tune(self, path: str | os.PathLike) -> float:
        """The threshold tuned on another split's `predictions.jsonl`."""
        raise NotImplementedError

    def table(self, metrics: dict) -> str:
        """The Markdown table of `metrics.md`, skipped rows included."""
        raise NotImplementedError

    def plot(self, metrics: dict, predictions: list[dict], path: str | os.PathLike) -> None:
        """Save the benchmark's figure to `path`."""
        raise NotImplementedError

    def headline(self, metrics: dict) -> str:
        """One line for the console."""
        raise NotImplementedError


class VisualProcessBenchAdapter(BenchmarkAdapter):
    name = "visualprocessbench"
    fields = ("scores", "references", "data_source")

    def load(self, config, step_token):
        from bis_prm.evaluation.visualprocessbench import load_visualprocessbench

        return load_visualprocessbench(
            config.benchmark,
            split=config.split,
            sources=config.sources,
            strict=config.strict,
            max_rows=config.max_rows,
            step_token=step_token,
        )

    def prediction(self, row, scores):
        return {
            "index": row["index"],
            "line": row["line"],
            "data_source": row["data_source"],
            "scores": scores,
            "references": row["labels"],
        }

    def compute(self, predictions, threshold):
        from bis_prm.evaluation.metrics import compute_visualprocessbench

        return compute_visualprocessbench(*(list(column) for column in _columns(predictions, self.fields)), threshold)

    def tune(self, path):
        from bis_prm.evaluation.metrics import select_threshold

        return select_threshold(*read_predictions(path, self.fields))

    def table(self, metrics):
        lines = [
            f"Threshold: {metrics['threshold']:.4f} ({metrics['threshold_source']}); "
            f"counted steps: {metrics['total_steps']}; rows scored: {metrics['rows']} of {metrics['rows_read']}",
            "",
            "| source | steps | macro-F1 | F1 (correct) | F1 (wrong) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for source, m in metrics["per_source"].items():
            lines.append(
                f"| {display_source(source)} | {m['steps']} | {100 * m['macro_f1']:.2f} "
                f"| {100 * m['f1_positive']:.2f} | {100 * m['f1_negative']:.2f} |"
            )
        overall = 100 * metrics["micro_over_sources"]
        lines.append(f"| **Overall (micro over sources)** | {metrics['total_steps']} | **{overall:.2f}** | | |")
        lines.append(
            f"| Pooled | {metrics['total_steps']} | {100 * metrics['macro_f1_pooled']:.2f} "
            f"| {100 * metrics['f1_positive']:.2f} | {100 * metrics['f1_negative']:.2f} |"
        )
        renamed = [
            f"{display_source(name)} = `{name}`" for name in metrics["per_source"] if display_source(name) != name
        ]
        auroc = "n/a" if metrics["auroc"] is None else f"{metrics['auroc']:.4f}"
        lines += ["", f"AUROC: {auroc}."]
        if renamed:
            lines.append(f"Source names in metrics.json: {', '.join(renamed)}.")
        return "\n".join(lines + skipped_text(metrics, "sources")) + "\n"

    def plot(self, metrics, predictions, path):
        """Per-source F1 bars and the score histograms of correct / wrong / neutral steps."""
        plt, np = _pyplot()
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
        bars.set_xticks(x, [display_source(source) for source in sources], rotation=20)
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
        _save(plt, figure, path)

    def headline(self, metrics):
        return f"micro over sources: {100 * metrics['micro_over_sources']:.2f}"


class ProcessBenchAdapter(BenchmarkAdapter):
    name = "processbench"
    filter_name = "splits"
    fields = ("scores", "label", "split")

    def load(self, config, step_token):
        from bis_prm.evaluation.processbench import load_processbench

        return load_processbench(
            config.benchmark,
            splits=config.sources,
            strict=config.strict,
            max_rows=config.max_rows,
            step_token=step_token,
        )

    def prediction(self, row, scores):
        return {
            "id": row["id"],
            "split": row["split"],
            "file": row["file"],
            "line": row["line"],
            "scores": scores,
            "label": row["label"],
        }

    def compute(self, predictions, threshold):
        from bis_prm.evaluation.metrics import compute_processbench

        metrics = compute_processbench(*(list(column) for column in _columns(predictions, self.fields)), threshold)
        # each problem's predicted index goes to its predictions.jsonl row, not to metrics.json
        for row, predicted in zip(predictions, metrics.pop("predicted_errors"), strict=True):
            row["prediction"] = predicted
        return metrics

    def tune(self, path):
        from bis_prm.evaluation.metrics import select_processbench_threshold

        return select_processbench_threshold(*read_predictions(path, self.fields))

    def table(self, metrics):
        lines = [
            f"Threshold: {metrics['threshold']:.4f} ({metrics['threshold_source']}); "
            f"problems scored: {metrics['rows']} of {metrics['rows_read']}",
            "",
            "| split | problems | with an error | all correct | error acc | correct acc | F1 |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for split, m in metrics["per_split"].items():
            lines.append(
                f"| {split} | {m['problems']} | {m['error_problems']} | {m['correct_problems']} "
                f"| {_percent(m['error_acc'])} | {_percent(m['correct_acc'])} | {_percent(m['f1'])} |"
            )
        lines.append(f"| **Average F1** | {metrics['problems']} | | | | | **{_percent(metrics['average_f1'])}** |")
        return "\n".join(lines + skipped_text(metrics, "splits")) + "\n"

    def plot(self, metrics, predictions, path):
        """The average and per-split F1 against the threshold, the threshold used marked."""
        from bis_prm.evaluation.metrics import processbench_f1_curve

        plt, np = _pyplot()
        curve = processbench_f1_curve(
            *(list(column) for column in _columns(predictions, self.fields)), np.linspace(0, 1, 101)
        )
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for split, f1 in curve["per_split"].items():
            if f1 is not None:
                axes.plot(curve["thresholds"], f1, label=split, alpha=0.7)
        if curve["average_f1"] is not None:
            axes.plot(curve["thresholds"], curve["average_f1"], color="black", linewidth=2, label="average")
        axes.axvline(metrics["threshold"], color="black", linestyle="--")
        axes.set_xlabel("threshold (first step scored below it = predicted error)")
        axes.set_ylabel("F1 (%)")
        axes.set_ylim(0, 100)
        axes.set_title("ProcessBench F1 against the threshold")
        axes.legend(fontsize="small")
        _save(plt, figure, path)

    def headline(self, metrics):
        return f"average F1: {_percent(metrics['average_f1'])}"


class PRMBenchAdapter(BenchmarkAdapter):
    name = "prmbench"
    filter_name = "classifications"
    fields = ("scores", "error_steps", "classification")
    auto_threshold = False

    def load(self, config, step_token):
        from bis_prm.evaluation.prmbench import load_prmbench

        return load_prmbench(
            config.benchmark,
            classifications=config.sources,
            strict=config.strict,
            max_rows=config.max_rows,
            step_token=step_token,
        )

    def prediction(self, row, scores):
        return {
            "id": row["id"],
            "classification": row["classification"],
            "file": row["file"],
            "line": row["line"],
            "scores": scores,
            "error_steps": row["error_steps"],
        }

    def compute(self, predictions, threshold):
        from bis_prm.evaluation.metrics import compute_prmbench

        if isinstance(threshold, str):
            raise ValueError("PRMBench's threshold is a fixed float (the toolkit's validity_threshold).")
        metrics = compute_prmbench(*(list(column) for column in _columns(predictions, self.fields)), threshold)
        metrics["threshold_source"] = "fixed"
        return metrics

    def tune(self, path):
        raise ValueError("PRMBench's threshold is a fixed float (the toolkit's validity_threshold).")

    def table(self, metrics):
        from bis_prm.evaluation.metrics.prmbench.prmbench import GROUPS

        lines = [
            f"Threshold: {metrics['threshold']:.4f} (fixed; a step is correct when its score is above it); "
            f"problems scored: {metrics['rows']} of {metrics['rows_read']}",
            "",
            "| group | category | problems | steps | PRMScore | F1 | negative F1 |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        per_category = metrics["per_category"]
        listed = [name for members in GROUPS.values() for name in members]
        for group, members in [*GROUPS.items(), ("", [n for n in per_category if n not in listed])]:
            for name in members:
                if name in per_category:
                    m = per_category[name]
                    lines.append(
                        f"| {group} | {name} | {m['problems']} | {m['steps']} | {100 * m['prm_score']:.2f} "
                        f"| {100 * m['f1']:.2f} | {100 * m['negative_f1']:.2f} |"
                    )
            if group in metrics["groups"]:
                lines.append(f"| {group} | *average* | | | {100 * metrics['groups'][group]:.2f} | | |")
        lines.append(
            f"| **Overall** | | {metrics['problems']} | | **{100 * metrics['prm_score']:.2f}** "
            f"| {100 * metrics['f1']:.2f} | {100 * metrics['negative_f1']:.2f} |"
        )
        lines += ["", "An F1 of -100 is the toolkit's -1: no step to compute it on (see the metric card)."]
        return "\n".join(lines + skipped_text(metrics, "classifications")) + "\n"

    def plot(self, metrics, predictions, path):
        """PRMScore per category, the overall one dashed."""
        plt, np = _pyplot()
        names = list(metrics["per_category"])
        figure, axes = plt.subplots(figsize=(10, 4.5))
        axes.bar(np.arange(len(names)), [metrics["per_category"][name]["prm_score"] for name in names])
        axes.axhline(metrics["prm_score"], color="black", linestyle="--", label="overall")
        axes.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
        axes.set_ylim(0, 1)
        axes.set_title(f"PRMScore per category (threshold {metrics['threshold']:.3f})")
        axes.legend(fontsize="small")
        _save(plt, figure, path)

    def headline(self, metrics):
        return f"PRMScore: {100 * metrics['prm_score']:.2f}"


ADAPTERS: dict[str, BenchmarkAdapter] = {
    adapter.name: adapter for adapter in (VisualProcessBenchAdapter(), ProcessBenchAdapter(), PRMBenchAdapter())
}

ADAPTERS_DEFAULT = "visualprocessbench"  # what `bis-prm eval` evaluated before it knew other benchmarks
# the Hub ids of the benchmarks, and the words that name them in other ids
_HUB_IDS = {
    "opengvlab/visualprocessbench": "visualprocessbench",
    "qwen/processbench": "processbench",
    "hitsmy/prmbench_preview": "prmbench",
}


def _columns(predictions: list[dict], fields: tuple[str, ...]) -> tuple[list, ...]:
    return tuple([row[name] for row in predictions] for name in fields)


def _first_record(path: Path) -> dict | None:
    from bis_prm.evaluation.processbench import iter_records

    for _, record, problem in iter_records(path, max_rows=1):
        return record if problem is None and isinstance(record, dict) else None
    return None


def _type_of_record(record: dict | None) -> str | None:
    if record is None:
        return None
    if "response" in record:
        return "visualprocessbench"
    if "modified_process" in record:
        return "prmbench"
    if "steps" in record or "completions" in record:
        return "processbench"
    return None


def detect_benchmark_type(benchmark: str | os.PathLike, split: str = "test") -> str:
    """
    Which benchmark `benchmark` is: from a local directory's files (`<split>.jsonl`: VisualProcessBench; split files
    `gsm8k.json`, ...: ProcessBench; other `.jsonl` files: PRMBench) or a file's first row, or from a Hub id's name.
    `visualprocessbench` when nothing tells.

    Example:

    ```python
    >>> detect_benchmark_type("Qwen/ProcessBench"), detect_benchmark_type("hitsmy/PRMBench_Preview")
    ('processbench', 'prmbench')

    ```
    """
    from bis_prm.evaluation.processbench import SPLITS

    path = Path(benchmark)
    if path.is_file():
        return _type_of_record(_first_record(path)) or ("processbench" if path.suffix == ".json" else ADAPTERS_DEFAULT)
    if path.is_dir():
        if (path / f"{split}.jsonl").is_file():
            return "visualprocessbench"
        files = sorted(p for p in [*path.iterdir(), *(path / "data").glob("*")] if p.is_file())
        if any(p.stem.split("-")[0] in SPLITS for p in files if p.suffix in (".json", ".jsonl", ".parquet")):
            return "processbench"
        for candidate in [p for p in files if p.suffix in (".json", ".jsonl")] or sorted(path.rglob("*.jsonl"))[:1]:
            found = _type_of_record(_first_record(candidate))
            if found:
                return found
        return ADAPTERS_DEFAULT
    name = str(benchmark).lower()
    if name in _HUB_IDS:
        return _HUB_IDS[name]
    for word in ("visualprocessbench", "prmbench", "processbench"):
        if word in name.replace("-", "").replace("_", ""):
            return word
    return ADAPTERS_DEFAULT


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    return plt, np


def _save(plt, figure, path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
