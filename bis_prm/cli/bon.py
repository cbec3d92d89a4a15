"""`bis-prm bon`: Best-of-N reranking of candidate solutions by aggregated PRM step scores."""

from __future__ import annotations

import argparse
import sys

from bis_prm.cli import existing_file, non_negative_int, positive_int, writable_file
from bis_prm.cli.eval import SCORER_NAMES, check_scorer


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
    parser.add_argument(
        "--scorer",
        choices=["auto", *SCORER_NAMES],
        default="auto",
        help="How step scores are read (see bis-prm eval --help and docs/scorers.md).",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="Run the checkpoint's own modeling code.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_scorer(args.model, args.scorer, trust_remote_code=args.trust_remote_code, max_images=args.max_images)

    import json

    from bis_prm.evaluation.best_of_n import best_of_n
    from bis_prm.model.scorers import load_scorer

    options = {"max_images": args.max_images} if args.max_images is not None else {}
    scorer = load_scorer(
        args.model,
        args.scorer,
        trust_remote_code=args.trust_remote_code,
        max_batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        num_workers=args.num_workers,
        **options,
    )
    results, summary = best_of_n(scorer.model, scorer.processor, args.candidates, args.aggregation, scorer=scorer)
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
