"""`bis-prm quickstart`: selection → training → evaluation on the embedded sample, offline, on a CPU."""

from __future__ import annotations

import argparse

from bis_prm.cli import existing_file, probability, writable_dir


def add_parser(subparsers, name: str, help: str) -> None:
    from bis_prm.quickstart import TINY_RECIPE

    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Write the embedded sample (a VisualPRM400K-Raw-layout corpus and a VisualProcessBench-layout benchmark) "
            "and a tiny random VLM, select a BIS subset, train a PRM with the tiny recipe (the recipes/train.py code "
            "path) and evaluate it with the visualprocessbench metric (the `bis-prm eval` code path). Offline; a few "
            "minutes on a CPU."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--output-dir", default="quickstart_output", type=writable_dir, help="Where everything is written."
    )
    parser.add_argument("--recipe", default=str(TINY_RECIPE), type=existing_file, help="Training recipe (YAML).")
    parser.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "internvl"], help="Tiny VLM backbone.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sample and the tiny model.")
    parser.add_argument(
        "--threshold", type=probability, default=0.5, help="Fixed step threshold of the evaluation, in [0, 1]."
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bis_prm.quickstart import QuickstartConfig, run_quickstart

    run_quickstart(
        QuickstartConfig(
            output_dir=args.output_dir, recipe=args.recipe, arch=args.arch, seed=args.seed, threshold=args.threshold
        )
    )
    return 0
