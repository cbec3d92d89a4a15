"""`bis-prm annotate`: Monte-Carlo step annotation of questions into a VisualPRM400K-Raw corpus."""

from __future__ import annotations

import argparse
import json
import os
import sys

from bis_prm.cli import CommandError, check_hub_write_access, hub_repo_id, positive_int, probability, writable_dir

_DESCRIPTION = """\
Sample N responses per question from a policy, split them into steps (on "\\n\\n", merged to at most 12), and score
each step by the share of K continuations from its prefix that reach the gold answer; write the corpus in the
VisualPRM400K-Raw layout (<output-dir>/annotations/<source>.jsonl), ready for `bis-prm select`.

A rerun with the same arguments resumes (finished batches are kept); other settings are refused. Questions: rows of
question, answer, optional image (path or list, relative to --image-root) and source; rows with a response or steps
are scored as they are. Text-only corpora: select with `bis-prm select --layout stepwise`.

Examples:
  bis-prm annotate --questions questions.jsonl --policy Qwen/Qwen2.5-7B-Instruct --backend vllm \\
      --num-rollouts 4 --num-mc 16 --output-dir my-corpus
  bis-prm annotate --questions questions.jsonl --policy Qwen/Qwen2.5-7B-Instruct --backend vllm-server \\
      --vllm-url http://127.0.0.1:8000 --output-dir my-corpus
  bis-prm annotate --questions questions.jsonl --policy Qwen/Qwen2.5-0.5B-Instruct --dry-run --output-dir x
  bis-prm annotate --questions questions.jsonl --policy ./policy --estimator adaptive --output-dir my-corpus
"""


def _temperature(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name, help=help, description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", required=True, help="JSONL / Parquet file, a directory of them, or a Hub id.")
    parser.add_argument("--split", default="train", help="Split of a Hub dataset (default: train).")
    parser.add_argument("--image-root", help="Folder image paths are relative to (default: the questions' folder).")
    parser.add_argument("--max-questions", type=positive_int, help="Annotate only the first questions.")
    parser.add_argument("--output-dir", required=True, type=writable_dir, help="The corpus directory.")
    parser.add_argument("--policy", default="", help="Policy model: a local path or a Hub id.")
    parser.add_argument("--backend", choices=("transformers", "vllm", "vllm-server"), default="transformers")
    parser.add_argument(
        "--vllm-url", help="--backend vllm-server: the running vLLM server (e.g. http://127.0.0.1:8000)."
    )
    parser.add_argument(
        "--vllm-api-key", help="--backend vllm-server: the server's --api-key (default: $VLLM_API_KEY)."
    )
    parser.add_argument("--instruction", help="Appended to each question in the prompt (default: step by step).")
    parser.add_argument("--num-rollouts", type=positive_int, default=4, help="Responses per question (default: 4).")
    parser.add_argument("--num-mc", type=positive_int, default=16, help="Continuations per step (default: 16).")
    parser.add_argument("--temperature", type=_temperature, default=0.7, help="Sampling temperature (default: 0.7).")
    parser.add_argument("--top-p", type=probability, default=1.0, help="Nucleus sampling (default: 1.0).")
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=1024, help="Token budget of a response (default: 1024)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed every continuation's seed derives from.")
    parser.add_argument("--max-steps", type=positive_int, default=12, help="Most steps per response (default: 12).")
    parser.add_argument(
        "--verifier", default="auto", help="auto, math (math-verify), choice, numeric, or module:function."
    )
    parser.add_argument(
        "--estimator",
        choices=("full", "adaptive", "budgeted"),
        default="full",
        help="full: VisualPRM400K's K per step; adaptive: outcome first, K only where a label is decided; budgeted: "
        "adaptive, then full MC for the likely BIS picks (default: full).",
    )
    parser.add_argument(
        "--initial-mc", type=positive_int, default=4, help="adaptive/budgeted: first draws per step (default: 4)."
    )
    parser.add_argument(
        "--refine-ratio",
        type=probability,
        default=0.2,
        help="budgeted: share per source refined with full MC, about twice the ratio to select (default: 0.2).",
    )
    parser.add_argument(
        "--target-alpha", type=float, default=0.2, help="budgeted: BIS alpha ranking what to refine (default: 0.2)."
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="Questions per resumable part.")
    parser.add_argument("--tensor-parallel-size", type=positive_int, default=1, help="vLLM tensor parallel size.")
    parser.add_argument("--data-parallel-size", type=positive_int, default=1, help="vLLM data parallel size.")
    parser.add_argument("--device", help="transformers backend device (default: CUDA when available).")
    parser.add_argument("--ray-workers", type=int, default=0, help="Run batches on this many Ray Data actors.")
    parser.add_argument("--dry-run", action="store_true", help="Print the expected tokens and stop.")
    parser.add_argument(
        "--expected-steps", type=positive_int, default=6, help="--dry-run: steps per sampled response (default: 6)."
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", type=hub_repo_id, help="Upload the corpus with a card.")
    parser.add_argument("--private", action="store_true", help="With --push-to-hub: a private repo.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    parser.set_defaults(func=run)


def _config(args):
    from bis_prm.annotation.config import DEFAULT_INSTRUCTION, AnnotateConfig

    try:
        return AnnotateConfig(
            questions=args.questions,
            output_dir=args.output_dir,
            split=args.split,
            image_root=args.image_root,
            max_questions=args.max_questions,
            policy=args.policy,
            backend=args.backend,
            instruction=DEFAULT_INSTRUCTION if args.instruction is None else args.instruction,
            num_rollouts=args.num_rollouts,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            num_mc=args.num_mc,
            max_steps=args.max_steps,
            verifier=args.verifier,
            estimator=args.estimator,
            initial_mc=args.initial_mc,
            refine_ratio=args.refine_ratio,
            target_alpha=args.target_alpha,
            batch_size=args.batch_size,
            tensor_parallel_size=args.tensor_parallel_size,
            data_parallel_size=args.data_parallel_size,
            device=args.device,
            vllm_url=args.vllm_url,
            vllm_api_key=args.vllm_api_key or os.environ.get("VLLM_API_KEY"),
            progress=not args.no_progress,
        )
    except ValueError as error:
        raise CommandError(str(error)) from None


def run(args) -> int:
    from bis_prm.annotation.cost import estimate_cost, format_cost
    from bis_prm.annotation.run import load_questions, run_annotation
    from bis_prm.annotation.store import ConfigMismatchError
    from bis_prm.annotation.verify import AnswerChecker
    from bis_prm.annotation.vllm_server_backend import VLLMServerError

    config = _config(args)
    if not args.policy:
        raise CommandError("--policy is required (a local model directory or a Hub id)")
    try:
        checker = AnswerChecker(config.verifier)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.push_to_hub:
        check_hub_write_access(args.push_to_hub)
    if args.dry_run:
        try:
            questions, skipped = load_questions(config, checker)
        except (FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from None
        counters = {}
        try:
            from bis_prm.annotation.transformers_backend import token_counters

            counters = dict(zip(("count_prompt", "count_tokens"), token_counters(config.policy), strict=True))
        except Exception as error:  # no tokenizer offline: the estimate falls back on characters / 4
            print(f"(no tokenizer for {config.policy}: {error}; counting 4 characters a token)", file=sys.stderr)
        estimate = estimate_cost(questions, config, expected_steps=args.expected_steps, **counters)
        print(json.dumps({"estimate": estimate.__dict__, "skipped": skipped.counts()}, indent=2))
        print(
            f"Expected (full MC, no early stop: an upper bound): {estimate.rollouts:,} rollouts, "
            f"{estimate.continuations:,} continuations, {estimate.generated_tokens:,} generated tokens, "
            f"{estimate.prompt_tokens:,} prompt tokens"
        )
        return 0
    try:
        result = run_annotation(config, ray_workers=args.ray_workers)
    except (ConfigMismatchError, FileNotFoundError, VLLMServerError) as error:
        raise CommandError(str(error)) from None
    print(f"Wrote {sum(result.rows.values())} rollouts to {result.annotations_dir} ({result.rows})")
    if result.skipped.total():
        print(f"Skipped input rows: {result.skipped.counts()} (lines in {result.output_dir / 'report.json'})")
    print(format_cost(result.total_cost, "Cost of the corpus"))
    if args.push_to_hub:
        from bis_prm.annotation.card import push_annotations_to_hub

        print(push_annotations_to_hub(result.output_dir, args.push_to_hub, result.report, private=args.private))
    return 0
