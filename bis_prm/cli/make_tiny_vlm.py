"""`bis-prm make-tiny-vlm`: write a tiny random VLM checkpoint and processor, offline."""

from __future__ import annotations

import argparse

from bis_prm.cli import writable_dir


def add_parser(subparsers, name: str, help: str) -> None:
    from bis_prm.testing import TINY_ARCHITECTURES

    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Write a tiny random base VLM checkpoint (a few layers, hidden size 64, tiny vision tower) with a locally "
            "trained tokenizer and a working processor. Needs no network; for tests and demos only."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--arch", choices=TINY_ARCHITECTURES, default="qwen2_5_vl", help="Backbone architecture.")
    parser.add_argument("--output", required=True, type=writable_dir, help="Output directory.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bis_prm.testing import make_tiny_vlm

    path = make_tiny_vlm(args.arch, args.output, seed=args.seed)
    print(f"Wrote a tiny {args.arch} checkpoint and processor to {path}")
    return 0
