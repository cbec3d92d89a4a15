"""The `bis-prm` command line.

Each sub-command lives in its own module of this package and exposes `add_parser(subparsers)`, which registers
its arguments and sets `func`, the function run with the parsed namespace. Modules are imported only when their
sub-command runs, so `bis-prm --help` stays fast and `bis-prm select` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> (module, one-line help); the module is imported lazily
COMMANDS = {
    "select": ("bis_prm.cli.select", "Score VisualPRM400K-style rollouts and write a BIS (or baseline) subset."),
    "eval": ("bis_prm.cli.eval", "Evaluate a PRM on VisualProcessBench (or a benchmark in its layout)."),
    "bon": ("bis_prm.cli.bon", "Best-of-N: rerank candidate solutions by aggregated step scores."),
    "make-sample": ("bis_prm.cli.make_sample", "Write the embedded sample corpus and benchmark to a directory."),
    "make-tiny-vlm": (
        "bis_prm.cli.make_tiny_vlm",
        "Write a tiny random VLM checkpoint (offline) for tests and demos.",
    ),
    "publish-metric": ("bis_prm.cli.publish_metric", "Publish the visualprocessbench metric as a Hub Space."),
    "quickstart": ("bis_prm.cli.quickstart", "Run selection -> training -> evaluation on the embedded sample."),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; only the sub-command named in `argv` (if any) is imported."""
    parser = argparse.ArgumentParser(
        prog="bis-prm",
        description=(
            "Balanced-Information Score (BIS) data selection, training and evaluation for multimodal "
            "process reward models. Run `bis-prm <command> --help` for the options of a command."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    wanted = next((arg for arg in (argv or []) if not arg.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        if name == wanted:
            importlib.import_module(module).add_parser(subparsers, name=name, help=help_text)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bis-prm` console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
