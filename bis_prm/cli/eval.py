"""`bis-prm eval`: evaluate a PRM on VisualProcessBench (or a benchmark in its layout)."""

from __future__ import annotations

import argparse


def _threshold(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a float or "auto", got {value!r}') from None


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Score every step of a VisualProcessBench-layout benchmark (<dir>/test.jsonl + images, or a Hub dataset "
            "id) with a PRM and write predictions.jsonl, metrics.json, metrics.md and plots.png. Several GPUs: "
            "`accelerate launch --num_processes N -m bis_prm eval ...`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="A saved PRM or a base VLM checkpoint.")
    parser.add_argument("--benchmark", default="OpenGVLab/VisualProcessBench", help="Directory, JSONL or Hub id.")
    parser.add_argument("--output-dir", required=True, help="Output directory.")
    parser.add_argument("--batch-size", type=int, default=8, help="Rows per forward pass.")
    parser.add_argument(
        "--threshold", type=_threshold, default=0.5, help='A float, or "auto" (tuned on these predictions).'
    )
    parser.add_argument(
        "--threshold-from", default=None, help="predictions.jsonl of another split to tune the threshold on."
    )
    parser.add_argument("--max-rows", type=int, default=None, help="Evaluate only the first rows.")
    parser.add_argument(
        "--max-images", type=int, default=None, help="Tile rows with more images into one grid (single-image models)."
    )
    parser.add_argument("--split", default="test", help="The benchmark's JSONL stem.")
    parser.add_argument("--any-source", action="store_true", help="Accept data sources beyond VisualProcessBench's.")
    parser.add_argument("--strict", action="store_true", help="Fail on the first unusable row instead of skipping.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bis_prm.evaluation.runner import EvalConfig, evaluate_prm

    config = EvalConfig(
        model=args.model,
        benchmark=args.benchmark,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        threshold=args.threshold,
        threshold_from=args.threshold_from,
        max_rows=args.max_rows,
        max_images=args.max_images,
        split=args.split,
        any_source=args.any_source,
        strict=args.strict,
    )
    evaluate_prm(config)
    return 0
