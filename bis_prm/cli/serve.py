"""`bis-prm serve`: a reward server for RL frameworks (OpenRLHF's `/get_reward`, verl, `PRMReward(url=...)`)."""

from __future__ import annotations

import argparse
import codecs
import importlib.util
import os
import re

from bis_prm.cli import CommandError, check_prm_path, positive_int

AGGREGATIONS = ("min", "mean", "last", "prod")


def _port(value: str) -> int:
    number = positive_int(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1-65535), got {value}")
    return number


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
        raise argparse.ArgumentTypeError(f"expected an http(s):// URL of a vLLM server, got {value!r}")
    return value.rstrip("/")


def _separator(value: str) -> str:
    # `--separator '\n\n'` from a shell arrives as backslash-n: read escapes as Python does
    try:
        separator = codecs.decode(value, "unicode_escape")
    except UnicodeDecodeError as error:
        raise argparse.ArgumentTypeError(f"bad escape in {value!r}: {error}") from None
    if not separator:
        raise argparse.ArgumentTypeError("must not be empty")
    return separator


def _reward_or_none(value: str) -> float | None:
    if value.lower() in ("none", "null"):
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number or "none", got {value!r}') from None


def _question_pattern(value: str) -> str:
    try:
        pattern = re.compile(value)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"not a regular expression ({error}): {value!r}") from None
    if pattern.groups == 0:
        raise argparse.ArgumentTypeError(f"needs a group around the question, e.g. (?P<question>...): {value!r}")
    return value


def _directory(value: str) -> str:
    if not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"no such directory: {value}")
    return os.path.realpath(value)


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Serve a PRM over HTTP for RL frameworks: POST /get_reward (OpenRLHF's remote reward: the query after "
            "its prompt is split into steps, scored and aggregated), POST /v1/score_steps (rows {question, steps, "
            "image?} -> per-step probabilities) and GET /health. Concurrent requests are batched together. The model "
            "runs in this process, or on vLLM servers (--vllm-url, repeatable). Binds 127.0.0.1 unless --host says "
            "otherwise. See docs/serving.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="A saved PRM (directory or Hub id).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind; 0.0.0.0 exposes the server.")
    parser.add_argument("--port", type=_port, default=8000)
    parser.add_argument(
        "--api-key",
        default=None,  # read from the environment in `run`: --help prints defaults, never the key
        help="Require `Authorization: Bearer KEY` on every route but /health (taken from $BIS_PRM_API_KEY when set).",
    )
    parser.add_argument(
        "--vllm-url",
        action="append",
        type=_http_url,
        default=None,
        help="Score on this vLLM server (serving --model with STEP pooling, see docs/vllm.md) instead of in "
        "this process; repeat for several replicas (each takes the next batch when it is free).",
    )
    parser.add_argument("--vllm-api-key", default=None, help="The vLLM servers' --api-key.")
    parser.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=16,
        help="Most rows of concurrent requests merged into one model call (1: no batching).",
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=16384,
        help="Most tokens per forward pass of the in-process model, padding included (vLLM has its own).",
    )
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default="min", help="The reward of /get_reward.")
    parser.add_argument(
        "--separator", type=_separator, default=r"\n\n", help="What ends a step (escapes such as \\n are read)."
    )
    parser.add_argument("--max-steps", type=positive_int, default=12, help="Merge longer responses into this many.")
    parser.add_argument(
        "--question-pattern",
        type=_question_pattern,
        default=None,
        help="A regex whose group `question` (or first group) is the question within a /get_reward prompt, e.g. "
        "'user\\n(?P<question>.*?)<[|]im_end[|]>' for a ChatML prompt; without it, the prompt is the question.",
    )
    parser.add_argument(
        "--strip-suffix",
        action="append",
        type=_separator,
        default=None,
        help="Cut this marker (e.g. the policy's '<|im_end|>') from the end of a /get_reward response; repeatable.",
    )
    parser.add_argument(
        "--unscorable-reward",
        type=_reward_or_none,
        default=0.0,
        help='The /get_reward reward of a query that cannot be scored, or "none" for null.',
    )
    parser.add_argument(
        "--allowed-local-media-path",
        type=_directory,
        default=None,
        help="Requests may name image files inside this directory; without it, only data URLs are read.",
    )
    parser.add_argument(
        "--max-request-bytes", type=positive_int, default=32 * 1024 * 1024, help="Larger bodies get 413."
    )
    parser.add_argument("--device", default=None, help="Device of the in-process model (None: cuda if available).")
    parser.add_argument("--dtype", default="auto", help="dtype of the in-process model.")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(func=run)


def _backends(args: argparse.Namespace) -> list:
    """The scoring backends: the vLLM servers, or the model in this process."""
    if args.vllm_url:
        from bis_prm.serving.vllm import VLLMScorer

        return [VLLMScorer(url, args.model, api_key=args.vllm_api_key) for url in args.vllm_url]

    import torch

    from bis_prm.model.inference import StepScorer
    from bis_prm.model.modeling_prm import load_prm

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, processor = load_prm(args.model, dtype=args.dtype, device_map={"": device})
    # the exact token budget of every forward pass is StepScorer's (see bis_prm.serving.engine)
    return [StepScorer(model.eval(), processor, args.max_batch_size, args.max_batch_tokens)]


def run(args: argparse.Namespace) -> int:
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandError(f"bis-prm serve needs {' and '.join(missing)}: pip install 'bis_prm[serve]'")
    if args.api_key is None:
        args.api_key = os.environ.get("BIS_PRM_API_KEY")
    if args.api_key is not None and not args.api_key.strip():
        raise CommandError("--api-key must not be empty")
    check_prm_path(args.model)

    from bis_prm.serving.api_server import build_app, run_server
    from bis_prm.serving.engine import BatchingEngine
    from bis_prm.serving.serving_reward import RewardConfig

    reward_config = RewardConfig(
        aggregation=args.aggregation,
        separator=args.separator,
        max_steps=args.max_steps,
        unscorable_reward=args.unscorable_reward,
        allowed_local_media_path=args.allowed_local_media_path,
        question_pattern=args.question_pattern,
        strip_suffixes=tuple(args.strip_suffix or ()),
    )
    engine = BatchingEngine(_backends(args), args.max_batch_size)
    app = build_app(engine, reward_config, args.model, args.api_key, args.max_request_bytes)
    run_server(app, args.host, args.port, args.log_level)
    return 0
