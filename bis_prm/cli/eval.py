"""`bis-prm eval`: evaluate a PRM on VisualProcessBench, ProcessBench or PRMBench (or a benchmark in their layouts)."""

from __future__ import annotations

import argparse
import os

from bis_prm.cli import (
    CommandError,
    check_prm_path,
    existing_file,
    non_negative_int,
    positive_int,
    probability,
    writable_dir,
)


def _threshold(value: str) -> float | str:
    return value if value == "auto" else probability(value)


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Score every step of a benchmark with a PRM and write predictions.jsonl, metrics.json, metrics.md and "
            "plots.png: VisualProcessBench (<dir>/test.jsonl + images), ProcessBench (gsm8k.json, math.json, ...) or "
            "PRMBench (.jsonl files), a local directory or a Hub dataset id (the type is detected, or given by "
            "--benchmark-type). Rows that cannot be scored are skipped and listed by reason and line. "
            "Several GPUs: `accelerate launch --num_processes N -m bis_prm eval ...`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="A saved PRM (directory or Hub id).")
    parser.add_argument(
        "--benchmark",
        default="OpenGVLab/VisualProcessBench",
        help="Directory, file or Hub id (e.g. Qwen/ProcessBench, hitsmy/PRMBench_Preview).",
    )
    parser.add_argument(
        "--benchmark-type",
        choices=["visualprocessbench", "processbench", "prmbench"],
        default=None,
        help="The benchmark's layout and metric; detected from --benchmark when not given.",
    )
    parser.add_argument("--output-dir", required=True, type=writable_dir, help="Output directory.")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="Most rows per forward pass.")
    parser.add_argument(
        "--max-batch-tokens", type=positive_int, default=32768, help="Most tokens per forward pass, padding included."
    )
    parser.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=None,
        help="DataLoader workers decoding images, per process (default: min(4, CPU cores / processes)).",
    )
    parser.add_argument(
        "--threshold",
        type=_threshold,
        default=0.5,
        help='A float in [0, 1], or "auto" (tuned on these predictions; not for PRMBench).',
    )
    parser.add_argument(
        "--threshold-from",
        type=existing_file,
        default=None,
        help="predictions.jsonl of another split to tune the threshold on.",
    )
    parser.add_argument("--max-rows", type=positive_int, default=None, help="Evaluate only the first rows.")
    parser.add_argument(
        "--max-images",
        type=positive_int,
        default=None,
        help="Tile rows with more images into one grid (single-image models).",
    )
    parser.add_argument("--split", default="test", help="VisualProcessBench: the benchmark's JSONL stem.")
    parser.add_argument(
        "--sources",
        nargs="+",
        default=None,
        help="Evaluate only these data_source values (ProcessBench: splits; PRMBench: classifications), exact names.",
    )
    parser.add_argument("--strict", action="store_true", help="Fail on the first unusable row instead of skipping.")
    parser.add_argument(
        "--head",
        choices=["yes_no", "linear"],
        default=None,
        help="Evaluate a base VLM as a zero-shot judge with this new head (yes_no: the LM's Yes/No logits).",
    )
    parser.add_argument("--dtype", default="auto", help='Weights dtype; "auto" keeps the checkpoint\'s.')
    parser.add_argument(
        "--attn-implementation",
        default=None,
        help="flash_attention_2, sdpa or eager; default: flash_attention_2 on a GPU when installed.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_prm_path(args.model, args.head)
    benchmark = args.benchmark
    if not os.path.exists(benchmark) and (benchmark.count("/") != 1 or benchmark.startswith((".", "/", "~"))):
        raise CommandError(f"benchmark {benchmark} does not exist (and is not a Hub dataset id)")

    from bis_prm.evaluation.adapters import ADAPTERS, detect_benchmark_type

    benchmark_type = args.benchmark_type or detect_benchmark_type(benchmark, args.split)
    if (
        benchmark_type == "visualprocessbench"
        and os.path.isdir(benchmark)
        and not os.path.isfile(os.path.join(benchmark, f"{args.split}.jsonl"))
    ):
        raise CommandError(f"no {args.split}.jsonl in {benchmark}")
    if not ADAPTERS[benchmark_type].auto_threshold and (args.threshold == "auto" or args.threshold_from):
        raise CommandError(f"{benchmark_type} takes a fixed --threshold (no auto, no --threshold-from)")

    from bis_prm.evaluation.benchmark import BenchmarkNotFoundError
    from bis_prm.evaluation.runner import EvalConfig, NoUsableRowsError, evaluate_prm

    config = EvalConfig(
        model=args.model,
        benchmark=args.benchmark,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        num_workers=args.num_workers,
        threshold=args.threshold,
        threshold_from=args.threshold_from,
        max_rows=args.max_rows,
        max_images=args.max_images,
        split=args.split,
        sources=args.sources,
        strict=args.strict,
        head=args.head,
        dtype=args.dtype,
        attn_implementation=args.attn_implementation,
        benchmark_type=benchmark_type,
    )
    try:
        evaluate_prm(config)
    except (NoUsableRowsError, BenchmarkNotFoundError) as error:
        raise CommandError(str(error)) from None
    return 0
