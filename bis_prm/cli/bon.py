"""`bis-prm bon`: Best-of-N reranking of candidate solutions by aggregated PRM step scores."""

from __future__ import annotations

import argparse
import sys

from bis_prm.cli import check_prm_path, existing_file, non_negative_int, positive_int, writable_file


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Score N candidate solutions per question with a PRM, pick the best by aggregated step scores and report "
            "its accuracy, the first-candidate baseline and the oracle (pass@N). Candidates JSONL, one question per "
            'line: {"id", "image": [...], "question", "answer"?, "candidates": [{"steps": [...], "answer"? | '
            '"correct"?}]}. Questions that cannot be scored are skipped and listed by reason and line.'
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="A saved PRM (directory or Hub id).")
    parser.add_argument("--candidates", required=True, type=existing_file, help="Candidates JSONL file.")
    parser.add_argument("--aggregation", choices=["mean", "min", "last", "prod"], default="mean")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="Most candidates per forward pass.")
    parser.add_argument("--max-batch-tokens", type=positive_int, default=32768, help="Most tokens per forward pass.")
    parser.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader workers decoding images.")
    parser.add_argument("--max-images", type=positive_int, default=None, help="Tile more images into one grid.")
    parser.add_argument("--output", type=writable_file, default=None, help="Write per-question choices (JSONL) here.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_prm_path(args.model)

    import json

    from bis_prm.evaluation.best_of_n import best_of_n
    from bis_prm.model.modeling_prm import load_prm

    model, processor = load_prm(args.model, dtype="auto")
    model.eval()
    results, summary = best_of_n(
        model,
        processor,
        args.candidates,
        args.aggregation,
        batch_size=args.batch_size,
        max_images=args.max_images,
        max_batch_tokens=args.max_batch_tokens,
        num_workers=args.num_workers,
    )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    print(json.dumps(summary, indent=2))
    if summary["skipped"]:
        counts = ", ".join(f"{reason}: {entry['count']}" for reason, entry in summary["skipped"].items())
        print(
            f"WARNING: {sum(e['count'] for e in summary['skipped'].values())} of {summary['questions_read']} "
            f"questions were skipped ({counts}); their lines are in the summary's `skipped`.",
            file=sys.stderr,
        )
    return 0
