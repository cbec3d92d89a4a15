"""`bis-prm make-sample DIR`: write the embedded sample corpus and benchmark (see `bis_prm.data.sample`)."""

from __future__ import annotations

import argparse

from bis_prm.cli import CommandError, positive_int, writable_dir
from bis_prm.data.sample import TEXT_SAMPLE_DEFAULTS, SampleConfig, make_sample


def add_parser(subparsers, name: str, help: str) -> None:
    defaults = SampleConfig()
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Write a small synthetic training corpus in the VisualPRM400K-v1.1-Raw layout (DIR/corpus) and a "
            "benchmark in the VisualProcessBench layout (DIR/benchmark), deterministically from a seed, offline, "
            "in seconds (--text: the text-only arithmetic sample). Use it to test a pipeline end to end before "
            "touching the real data."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("output_dir", metavar="DIR", type=writable_dir, help="Directory to write the sample to.")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="Seed; the same seed writes the same bytes.")
    parser.add_argument(
        "--num-rollouts", type=positive_int, default=defaults.num_rollouts, help="Training rollouts over all sources."
    )
    parser.add_argument(
        "--num-benchmark-rows",
        type=positive_int,
        default=defaults.num_benchmark_rows,
        help="Benchmark rows over all sources.",
    )
    parser.add_argument(
        "--text",
        action="store_true",
        help="Write the text-only arithmetic sample instead (DIR/corpus: a stepwise MC-annotated corpus, DIR/trl: the "
        "same rollouts in TRL's stepwise format, DIR/benchmark: VisualProcessBench layout without images).",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = SampleConfig(
            seed=args.seed,
            num_rollouts=args.num_rollouts,
            num_benchmark_rows=args.num_benchmark_rows,
            **(TEXT_SAMPLE_DEFAULTS if args.text else {}),
        )
    except ValueError as error:
        raise CommandError(str(error)) from None
    paths = make_sample(args.output_dir, config)
    corpus, benchmark = paths.statistics["corpus"], paths.statistics["benchmark"]
    steps = corpus["steps"]
    layout = "stepwise, MC scores" if args.text else "VisualPRM400K-v1.1-Raw layout"
    print(f"Corpus ({layout}): {paths.corpus_root}")
    for source, count in corpus["sources"].items():
        print(f"  {paths.annotations_dir.relative_to(paths.corpus_root) / f'{source}.jsonl'}: {count} rollouts")
    print(f"  {corpus['rollouts']} rollouts, {steps} steps, {corpus['images']} images")
    print(f"  wrong steps: {corpus['wrong_steps'] / steps:.1%} (MC score 0: {corpus['negative_steps'] / steps:.1%})")
    print(f"  mixed rollouts: {corpus['mixed_rollouts'] / corpus['rollouts']:.1%}")
    print(
        f"  pseudo-positive steps (wrong, MC score > 0): {corpus['pseudo_positive_steps']}; "
        f"low-reliability positives (0 < MC score <= 0.25): {corpus['low_reliability_positive_steps']}"
    )
    if paths.trl_file is not None:
        print(f"The same rollouts in TRL's stepwise-supervision format: {paths.trl_file}")
    labels = benchmark["labels"]
    counted = sum(labels.values())
    print(f"Benchmark (VisualProcessBench layout): {paths.benchmark_file}")
    for source, count in benchmark["sources"].items():
        print(f"  data_source {source}: {count} rows")
    print(
        f"  {benchmark['rows']} rows ({benchmark['multi_image_rows']} with two images), {counted} steps: "
        f"{labels['1']} correct, {labels['-1']} wrong ({labels['-1'] / counted:.1%}), {labels['0']} neutral"
    )
    print(f"Statistics: {paths.root / 'statistics.json'}")
    return 0
