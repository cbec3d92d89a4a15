"""`bis-prm bon`: Best-of-N reranking of candidate solutions by aggregated PRM step scores."""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Score N candidate solutions per question with a PRM, pick the best by aggregated step scores and report "
            "its accuracy, the first-candidate baseline and the oracle (pass@N). Candidates JSONL, one question per "
            'line: {"id", "image": [...], "question", "answer"?, "candidates": [{"steps": [...], "answer"? | '
            '"correct"?}]}.'
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="A saved PRM or a base VLM checkpoint.")
    parser.add_argument("--candidates", required=True, help="Candidates JSONL file.")
    parser.add_argument("--aggregation", choices=["mean", "min", "last", "prod"], default="mean")
    parser.add_argument("--batch-size", type=int, default=8, help="Candidates per forward pass.")
    parser.add_argument("--max-images", type=int, default=None, help="Tile more images into one grid.")
    parser.add_argument("--output", default=None, help="Write per-question choices (JSONL) here.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from bis_prm.evaluation.best_of_n import best_of_n
    from bis_prm.model.modeling_prm import load_prm

    model, processor = load_prm(args.model)
    model.eval()
    results, summary = best_of_n(
        model, processor, args.candidates, args.aggregation, batch_size=args.batch_size, max_images=args.max_images
    )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    print(json.dumps(summary, indent=2))
    return 0
