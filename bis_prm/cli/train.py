"""`bis-prm train --config RECIPE.yaml`: train a PRM with a recipe, the code of `recipes/train.py`."""

from __future__ import annotations

import argparse

from bis_prm.cli import CommandError


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help,
        add_help=False,  # --help goes to the recipe parser, which knows every option
        description="Train a PRM with a YAML recipe; any recipe key can be overridden (`--learning_rate 2e-5`).",
    )
    parser.set_defaults(func=run, passes_extra_arguments=True)


def run(args: argparse.Namespace) -> int:
    from bis_prm.training.script import main as train
    from bis_prm.training.script import parse_recipe

    try:
        script_args, training_args, model_args = parse_recipe(args.extra_arguments, prog="bis-prm train")
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None
    train(script_args, training_args, model_args)
    return 0
