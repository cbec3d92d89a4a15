"""`bis-prm make-tiny-vlm` / `bis-prm make-tiny-lm`: write a tiny random VLM (or text LM) checkpoint with its
processor (tokenizer), offline."""

from __future__ import annotations

import argparse

from bis_prm.cli import writable_dir


def add_parser(subparsers, name: str, help: str) -> None:
    from bis_prm.testing import TINY_ARCHITECTURES, TINY_TEXT_ARCHITECTURES

    text = name == "make-tiny-lm"
    what = (
        "a tiny random causal LM checkpoint (2 layers, hidden size 64) with a locally trained tokenizer and a chat "
        "template: the base of a text PRM"
        if text
        else "a tiny random base VLM checkpoint (a few layers, hidden size 64, tiny vision tower) with a locally "
        "trained tokenizer and a working processor"
    )
    parser = subparsers.add_parser(
        name,
        help=help,
        description=f"Write {what}. Needs no network; for tests and demos only.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    choices = TINY_TEXT_ARCHITECTURES if text else TINY_ARCHITECTURES
    parser.add_argument("--arch", choices=choices, default=choices[0], help="Backbone architecture.")
    parser.add_argument("--output", required=True, type=writable_dir, help="Output directory.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bis_prm.testing import TINY_TEXT_ARCHITECTURES, make_tiny_lm, make_tiny_vlm

    make = make_tiny_lm if args.arch in TINY_TEXT_ARCHITECTURES else make_tiny_vlm
    path = make(args.arch, args.output, seed=args.seed)
    print(
        f"Wrote a tiny {args.arch} checkpoint and its {'tokenizer' if make is make_tiny_lm else 'processor'} to {path}"
    )
    return 0
