"""`bis-prm convert-internvl SRC OUT`: a remote-code InternVL2 / InternVL2.5 checkpoint to transformers' layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from bis_prm.cli import CommandError, writable_dir


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Convert a remote-code InternVL2 / InternVL2.5 checkpoint (OpenGVLab/InternVL2_5-8B, "
            "OpenGVLab/VisualPRM-8B, the other sizes; a local folder or a Hub id) into an "
            "InternVLForConditionalGeneration checkpoint with its InternVLProcessor, fast tokenizer and chat "
            "template, loadable by AutoModelForImageTextToText and `load_prm`. InternLM2 language models become "
            "Llama, Qwen2 ones stay Qwen2. Only the safetensors and JSON files are read: no remote code runs."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("source", metavar="SRC", help="Checkpoint folder or Hub repo id.")
    parser.add_argument("output", metavar="OUT", type=writable_dir, help="Folder to write (must not exist).")
    parser.add_argument("--max-shard-size", default="5GB", help="Largest safetensors shard (e.g. 5GB, 500MB).")
    parser.add_argument("--overwrite", action="store_true", help="Replace OUT once the conversion has succeeded.")
    parser.add_argument("--revision", default=None, help="Hub revision of SRC.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if Path(args.output).exists() and not args.overwrite:
        raise CommandError(f"{args.output} already exists (pass --overwrite to replace it)")

    from bis_prm.model.convert_internvl import InternVLConversionError, convert_internvl

    try:
        path = convert_internvl(
            args.source,
            args.output,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            revision=args.revision,
        )
    except (InternVLConversionError, ValueError) as error:
        raise CommandError(f"{args.source}: {error}") from None
    print(f"Converted {args.source} to {path}; load it with load_prm({str(path)!r}, head=...)")
    return 0
