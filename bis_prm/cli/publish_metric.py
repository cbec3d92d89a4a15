"""`bis-prm publish-metric`: publish a metric of bis_prm (VisualProcessBench, ProcessBench, PRMBench) as a Hub
Space."""

from __future__ import annotations

import argparse

from bis_prm.cli import check_hub_write_access, hub_repo_id, writable_dir


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Create a Gradio Space holding a metric of bis_prm (script, metric card, app.py, requirements.txt) so "
            'that anyone can `evaluate.load("<user>/<name>")` it. Needs `hf auth login`.'
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--repo-id", required=True, type=hub_repo_id, help="The Space, <user>/<name>.")
    parser.add_argument(
        "--metric",
        choices=["visualprocessbench", "processbench", "prmbench"],  # publish.METRICS, without importing it here
        default="visualprocessbench",
        help="The metric to publish.",
    )
    parser.add_argument("--private", action="store_true", help="Create a private Space.")
    parser.add_argument(
        "--dry-run", metavar="DIR", type=writable_dir, default=None, help="Only write the Space's files to DIR."
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.dry_run:
        check_hub_write_access(args.repo_id)

    from bis_prm.evaluation.metrics.publish import prepare_space, publish_metric

    if args.dry_run:
        folder = prepare_space(args.repo_id, args.dry_run, args.metric)
        print(f"Wrote the Space files of the {args.metric} metric for {args.repo_id} to {folder}")
        return 0
    url = publish_metric(args.repo_id, private=args.private, metric=args.metric)
    print(f'Published {url}; load it with evaluate.load("{args.repo_id}")')
    return 0
