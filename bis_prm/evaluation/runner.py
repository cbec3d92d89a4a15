"""`bis-prm eval`: score every step of a benchmark with a PRM and write its metrics.

One scoring path for every benchmark (VisualProcessBench, ProcessBench, PRMBench): a benchmark is an adapter of
`bis_prm.evaluation.adapters` (its reader, metric, `predictions.jsonl` row, table and plot), chosen from
`EvalConfig.benchmark_type` or detected from the benchmark's files or Hub id.

Built for a 7-8B PRM on one or more GPUs: the model is loaded in its checkpoint's dtype straight onto its device;
rows are batched by total tokens (text + image tokens, image sizes from the file headers), longest first, and
rendered (images decoded, processor run) in `DataLoader` workers. The batches do not depend on the number of
processes: under `accelerate launch --num_processes N` whole batches are dealt so that every process computes a
similar number of tokens, and the scores are the same as on one process. Rank 0 gathers them, computes the metrics
and writes the files.

No row can abort the run: a row that cannot be read or rendered is skipped and reported by reason with its 1-based
line number (in `metrics.json`, `metrics.md` and on the console), and the metrics are computed over the others.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bis_prm.evaluation.adapters import ADAPTERS, BenchmarkAdapter, detect_benchmark_type, read_predictions
from bis_prm.evaluation.benchmark import Benchmark

__all__ = ["EvalConfig", "NoUsableRowsError", "evaluate_prm", "metrics_table", "plot_metrics", "read_predictions"]


class NoUsableRowsError(ValueError):
    """Raised when no row of the benchmark can be scored; the message says why."""


@dataclass
class EvalConfig:
    """
    Configuration of [`evaluate_prm`].

    Parameters:
        model (`str`):
            A saved PRM (local directory or Hub id).
        benchmark (`str`):
            A benchmark directory or file, or a Hub dataset repo id: VisualProcessBench (`<dir>/test.jsonl` and
            images), ProcessBench (`gsm8k.json`, ...) or PRMBench (`.jsonl` files).
        output_dir (`str`):
            Where `predictions.jsonl`, `metrics.json`, `metrics.md` and `plots.png` are written.
        batch_size (`int`, *optional*, defaults to `8`):
            Most rows per forward pass.
        max_batch_tokens (`int`, *optional*, defaults to `32768`):
            Most tokens per forward pass, padding included (rows x the longest row); `None` for no limit.
        num_workers (`int`, *optional*):
            `DataLoader` workers per process that decode images and run the processor; defaults to
            `min(4, CPU cores / processes)`.
        threshold (`float` or `str`, *optional*, defaults to `0.5`):
            A float in [0, 1], or `"auto"` to tune it on the evaluated predictions (not for PRMBench, whose toolkit
            fixes it).
        threshold_from (`str`, *optional*):
            A `predictions.jsonl` of another split (e.g. a dev split) to tune the threshold on; overrides `threshold`.
        max_rows (`int`, *optional*):
            Evaluate only the first rows of the file (of each file, for ProcessBench and PRMBench).
        max_images (`int`, *optional*):
            Tile rows with more images into one grid (at most 3 columns) for models that take a single image.
        split (`str`, *optional*, defaults to `"test"`):
            VisualProcessBench: the benchmark's JSONL stem.
        sources (`list[str]`, *optional*):
            Evaluate only these `data_source` values (VisualProcessBench), splits (ProcessBench) or classifications
            (PRMBench), exact names; everything when `None`.
        benchmark_type (`str`, *optional*):
            `"visualprocessbench"`, `"processbench"` or `"prmbench"`; detected from `benchmark` when `None`.
        strict (`bool`, *optional*, defaults to `False`):
            Fail on the first unusable row instead of skipping and counting it.
        head (`str`, *optional*):
            Evaluate a base VLM as a zero-shot judge with this new head (`"yes_no"`: the LM's Yes/No logits).
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weights dtype; `"auto"` keeps the checkpoint's.
        attn_implementation (`str`, *optional*):
            `"flash_attention_2"`, `"sdpa"`, `"eager"`, ...; defaults to `flash_attention_2` when it is installed and
            a GPU is used, else transformers' default.
        scorer (`str`, *optional*, defaults to `"auto"`):
            How step scores are read from the model: `bis_prm`, `trl`, `qwen_prm`, `math_shepherd`, `rlhflow`,
            `visualprm`, or `auto` (from the checkpoint's config; see [`~bis_prm.model.scorers.load_scorer`]).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Run the checkpoint's own modeling code (Qwen2.5-Math-PRM); refused without it.
        step_separator (`str`, *optional*):
            `trl` scorer: the `step_separator` the PRM was trained with (TRL's default `"\\n"` when `None`).
    """

    model: str
    benchmark: str
    output_dir: str
    batch_size: int = 8
    max_batch_tokens: int | None = 32768
    num_workers: int | None = None
    threshold: float | str = 0.5
    threshold_from: str | None = None
    max_rows: int | None = None
    max_images: int | None = None
    split: str = "test"
    sources: list[str] | None = None
    strict: bool = False
    head: str | None = None
    dtype: str = "auto"
    attn_implementation: str | None = None
    benchmark_type: str | None = None
    scorer: str = "auto"
    trust_remote_code: bool = False
    step_separator: str | None = None


def adapter_for(config: EvalConfig) -> BenchmarkAdapter:
    """The adapter of `config.benchmark_type`, or of the type detected from `config.benchmark`."""
    name = config.benchmark_type or detect_benchmark_type(config.benchmark, config.split)
    if name not in ADAPTERS:
        raise ValueError(f"benchmark_type must be one of {', '.join(ADAPTERS)}, got {name!r}.")
    return ADAPTERS[name]


def _choose_threshold(config: EvalConfig, adapter: BenchmarkAdapter) -> tuple[float | str, str | None]:
    if config.threshold_from is not None:
        return adapter.tune(config.threshold_from), f"auto (separate split: {config.threshold_from})"
    return config.threshold, None


def metrics_table(metrics: dict) -> str:
    """The per-source Markdown table of VisualProcessBench metrics (percentages, as in the papers), with the
    skipped rows."""
    return ADAPTERS["visualprocessbench"].table(metrics)


def plot_metrics(metrics: dict, predictions: list[dict], path: str | os.PathLike) -> None:
    """Per-source F1 bars and the score histograms of correct / wrong / neutral steps, saved to `path`."""
    ADAPTERS["visualprocessbench"].plot(metrics, predictions, path)


def _no_usable_rows(benchmark: Benchmark, when: str, filter_name: str = "sources") -> NoUsableRowsError:
    counts = benchmark.skip_counts()
    why = ", ".join(f"{reason}: {n}" for reason, n in counts.items()) or "the file has no row"
    if benchmark.excluded:
        why += f"; {sum(benchmark.excluded.values())} left out by the {filter_name} filter"
    return NoUsableRowsError(f"no row of {benchmark.path} could be {when} ({why})")


def _load_model(config: EvalConfig, device, num_workers: int):
    """The scorer of `config.model`: the model on `device` and the way its step scores are read."""
    from transformers.utils import is_flash_attn_2_available

    from bis_prm.model.scorers import load_scorer

    model_kwargs = {}
    attn_implementation = config.attn_implementation
    if attn_implementation is None and device.type == "cuda" and is_flash_attn_2_available():
        attn_implementation = "flash_attention_2"
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    # options of one format only, passed when set so that another scorer is not handed what it cannot take
    options = {"max_images": config.max_images, "step_separator": config.step_separator}
    return load_scorer(
        config.model,
        config.scorer,
        trust_remote_code=config.trust_remote_code,
        device=device,
        dtype=config.dtype,
        head=config.head,
        model_kwargs=model_kwargs,
        max_batch_size=config.batch_size,
        max_batch_tokens=config.max_batch_tokens,
        num_workers=num_workers,
        **{key: value for key, value in options.items() if value is not None},
    )


def _workers(requested: int | None, num_processes: int) -> int:
    if requested is not None:
        return requested
    return min(4, len(os.sched_getaffinity(0)) // num_processes if hasattr(os, "sched_getaffinity") else 1)


def evaluate_prm(config: EvalConfig) -> dict | None:
    """
    Score a benchmark with a PRM and write its predictions, metrics, Markdown table and plots.

    Args:
        config ([`EvalConfig`]): what to evaluate and where to write.

    Returns:
        `dict` or `None`: the metrics on the main process (also written to `metrics.json`), `None` on the others.

    Raises:
        [`NoUsableRowsError`]: when no row of the benchmark can be scored.

    Example:

    ```python
    >>> metrics = evaluate_prm(  # doctest: +SKIP
    ...     EvalConfig(model="prm", benchmark="datasets/VisualProcessBench", output_dir="out")
    ... )
    >>> metrics["micro_over_sources"]  # doctest: +SKIP
    0.62

    ```
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from bis_prm.model.inference import deal_batches, plan_batches
    from bis_prm.model.scorers import checkpoint_step_token

    state = PartialState()
    adapter = adapter_for(config)
    if config.threshold == "auto" and not adapter.auto_threshold:
        raise ValueError(f'{adapter.name} takes a fixed threshold, not "auto".')
    # tune first: a bad --threshold-from file fails before the (long) scoring
    threshold, threshold_source = _choose_threshold(config, adapter)
    # rows are checked for the scorer's step token as they are read: a bad row is listed before the model loads
    benchmark = adapter.load(config, checkpoint_step_token(config.model, config.scorer, config.head))
    if not benchmark.rows:
        raise _no_usable_rows(benchmark, "read", adapter.filter_name)
    if state.is_main_process:
        print(
            f"{benchmark.path} ({adapter.name}): {len(benchmark.rows)} usable rows of {benchmark.lines_read}, "
            f"{benchmark.num_steps} steps; skipped: {benchmark.skip_counts() or 'none'}"
            + (f"; left out by --sources: {benchmark.excluded}" if benchmark.excluded else "")
        )

    scorer = _load_model(config, state.device, _workers(config.num_workers, state.num_processes))
    rows = benchmark.rows
    lengths = scorer.lengths(rows)
    batches = plan_batches(lengths, config.batch_size, config.max_batch_tokens)
    mine = [batches[index] for index in deal_batches(batches, lengths, state.num_processes)[state.process_index]]
    start = time.perf_counter()
    results = list(scorer.iter_scores(rows, mine, progress=state.is_main_process))
    if state.num_processes > 1:
        results = gather_object(results)
    seconds = time.perf_counter() - start
    if not state.is_main_process:
        return None

    scored = {row: scores for row, scores, _ in results if scores is not None}
    for row, _, failure in sorted((r for r in results if r[2] is not None), key=lambda r: r[0]):
        benchmark.skipped.add(failure[0], rows[row]["line"], failure[1], file=rows[row].get("file"))
    if not scored:
        raise _no_usable_rows(benchmark, "scored", adapter.filter_name)
    predictions = [adapter.prediction(row, scored[p]) for p, row in enumerate(rows) if p in scored]
    metrics = adapter.compute(predictions, threshold)
    metrics["threshold_source"] = threshold_source or metrics["threshold_source"]
    metrics["rows"] = len(predictions)
    metrics["rows_read"] = benchmark.lines_read
    metrics["skipped"] = benchmark.skipped_summary()
    metrics["excluded_by_sources"] = dict(benchmark.excluded)
    metrics["benchmark"] = str(benchmark.path)
    metrics["benchmark_type"] = adapter.name
    metrics["model"] = str(config.model)

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in predictions)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    table = adapter.table(metrics)
    (output_dir / "metrics.md").write_text(table, encoding="utf-8")
    adapter.plot(metrics, predictions, output_dir / "plots.png")
    print(table)
    print(
        f"{adapter.headline(metrics)}; scored {len(predictions)} rows in {seconds:.1f} s "
        f"({len(predictions) / seconds:.1f} rows/s) on "
        f"{state.num_processes} process(es); padding: {100 * scorer.stats.padding_fraction:.1f} % of the computed "
        "tokens (rank 0)."
    )
    skipped = {reason: entry["count"] for reason, entry in metrics["skipped"].items()}
    if skipped:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in skipped.items())
        print(
            f"WARNING: {sum(skipped.values())} of {benchmark.lines_read} rows were skipped and are not in the "
            f"metrics ({reasons}); their lines are listed in {output_dir / 'metrics.md'} and "
            f"{output_dir / 'metrics.json'}.",
            file=sys.stderr,
        )
    return metrics
