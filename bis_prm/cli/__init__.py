"""The `bis-prm` command line.

Each sub-command lives in its own module of this package and exposes `add_parser(subparsers)`, which registers
its arguments and sets `func`, the function run with the parsed namespace. Modules are imported only when their
sub-command runs, so `bis-prm --help` stays fast and `bis-prm select` never imports torch.

A user mistake (a bad argument, a missing or invalid path) is reported before any expensive work, in one line
`bis-prm <command>: error: ...`, with exit code 2: argument types check values while parsing, and a sub-command
raises [`CommandError`] for what needs a look at the files.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

# sub-command name -> (module, one-line help); the module is imported lazily
COMMANDS = {
    "annotate": (
        "bis_prm.cli.annotate",
        "Monte-Carlo step annotation: questions in, a VisualPRM400K-Raw corpus out (vLLM or transformers).",
    ),
    "select": (
        "bis_prm.cli.select",
        "Score MC-annotated rollouts (VisualPRM400K or any stepwise corpus) and write a BIS subset.",
    ),
    "train": ("bis_prm.cli.train", "Train a PRM with a recipe (the code of recipes/train.py)."),
    "eval": ("bis_prm.cli.eval", "Evaluate a PRM (ours or others') on VisualProcessBench, ProcessBench or PRMBench."),
    "bon": ("bis_prm.cli.bon", "Best-of-N: rerank candidate solutions by aggregated step scores."),
    "make-sample": ("bis_prm.cli.make_sample", "Write the embedded sample corpus and benchmark to a directory."),
    "make-tiny-vlm": (
        "bis_prm.cli.make_tiny_vlm",
        "Write a tiny random VLM checkpoint (offline) for tests and demos.",
    ),
    "make-tiny-lm": (
        "bis_prm.cli.make_tiny_vlm",
        "Write a tiny random text LM checkpoint (offline), the base of a text PRM, for tests and demos.",
    ),
    "convert-internvl": (
        "bis_prm.cli.convert_internvl",
        "Convert a remote-code InternVL2/2.5 checkpoint (InternVL2.5-8B, VisualPRM-8B) to transformers' layout.",
    ),
    "publish-metric": ("bis_prm.cli.publish_metric", "Publish the visualprocessbench metric as a Hub Space."),
    "quickstart": ("bis_prm.cli.quickstart", "Run selection -> training -> evaluation on the embedded sample."),
    "serve": ("bis_prm.cli.serve", "Serve a PRM as a reward server for RL frameworks (OpenRLHF, verl, TRL)."),
    "vllm-command": ("bis_prm.cli.vllm_command", "Print the vLLM command that serves a PRM (STEP pooling)."),
}


class CommandError(Exception):
    """A user mistake found by a sub-command; `main` prints it in one line and exits with code 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line, `<prog>: error: <message>`, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---- argument types: each checks one value while parsing (argparse turns the error into one line) ----


def probability(value: str) -> float:
    """A float in [0, 1]."""
    number = _number(value, float)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return number


def positive_int(value: str) -> int:
    number = _number(value, int)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def non_negative_int(value: str) -> int:
    number = _number(value, int)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def existing_file(value: str) -> str:
    if not os.path.isfile(value):
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    return value


def writable_dir(value: str) -> str:
    """A directory that exists or can be created: its closest existing ancestor is a writable directory."""
    path = Path(value).absolute()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} exists and is not a directory")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot create {value}: {ancestor} is not a writable directory")
    return value


def writable_file(value: str) -> str:
    """A file path whose folder exists or can be created."""
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is a directory, not a file")
    writable_dir(str(Path(value).absolute().parent))
    return value


def _number(value: str, kind: type):
    try:
        return kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {value!r}"
        ) from None


def check_prm_path(model: str, head: str | None = None) -> None:
    """
    Raise a [`CommandError`] unless `model` is a saved PRM (a local directory whose `config.json` has PRM settings)
    or a Hub repo id; with `head`, a base model directory is accepted too (it becomes a PRM with that head).
    """
    path = Path(model)
    if not path.exists():
        if model.count("/") == 1 and not model.startswith((".", "/", "~")):
            return  # a Hub repo id: from_pretrained downloads it and reports what is wrong with it
        raise CommandError(f"model path {model} does not exist (and is not a Hub repo id)")
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise CommandError(f"{model} is not a model directory (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CommandError(f"{config_file} cannot be read: {error}") from None
    if "prm_head" not in config and head is None:
        raise CommandError(
            f"{model} is not a PRM (its config.json has no prm_head); train one with `bis-prm train`, or pass "
            "--head yes_no to evaluate the base model as a zero-shot judge"
        )


def hub_repo_id(value: str) -> str:
    """A Hub repo id, `<namespace>/<name>`."""
    parts = value.split("/")
    if len(parts) != 2 or not all(parts) or value.startswith((".", "~")):
        raise argparse.ArgumentTypeError(f"expected a Hub repo id <namespace>/<name>, got {value!r}")
    return value


def check_hub_write_access(repo_id: str) -> None:
    """
    Raise a [`CommandError`] unless a Hub token is set and its user may write to `repo_id`'s namespace (the user's
    own or one of their organisations): a push must not fail after the expensive work.
    """
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if token is None:
        raise CommandError(f"pushing to {repo_id} needs a Hub login: run `hf auth login` or set HF_TOKEN")
    try:
        whoami = HfApi(token=token).whoami()
    except Exception as error:  # offline, a revoked token, ...: whatever it is, say it now rather than later
        raise CommandError(f"cannot check the Hub login for {repo_id}: {error}") from None
    namespaces = {whoami.get("name")} | {org.get("name") for org in whoami.get("orgs", [])}
    namespace = repo_id.split("/")[0]
    if namespace not in namespaces:
        raise CommandError(
            f"the Hub user {whoami.get('name')!r} cannot write to {repo_id!r} (may write to: {sorted(namespaces)})"
        )


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; only the sub-command named in `argv` (if any) is imported."""
    parser = OneLineErrorParser(
        prog="bis-prm",
        description=(
            "Balanced-Information Score (BIS) data selection, training and evaluation for multimodal "
            "process reward models. Run `bis-prm <command> --help` for the options of a command."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", parser_class=OneLineErrorParser)
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
    # `bis-prm train` hands its arguments to the recipe parser, which knows every training option
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if extra and not getattr(args, "passes_extra_arguments", False):
        print(f"bis-prm {args.command}: error: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
        return 2
    args.extra_arguments = extra
    try:
        return int(args.func(args) or 0)
    except CommandError as error:
        print(f"bis-prm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
