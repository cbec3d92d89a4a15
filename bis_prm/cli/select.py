"""`bis-prm select`: score VisualPRM400K-style rollouts and write a BIS (or baseline) subset."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from ..data.formats import FORMATS, to_prm_format, write_subset
from ..data.scoring import score_rollouts
from ..data.selection import METHODS, select_subset, subset_report
from ..data.visualprm400k import INVALID_REASONS, annotations_to_dataset, resolve_visualprm400k

_DESCRIPTION = """\
Score every rollout of a VisualPRM400K-style corpus (<root>/annotations/<source>.jsonl) with the Balanced-Information
Score BIS = (p_pos * (1 - p_pos) + alpha) * R, where a step is positive when its MC score is > tau, p_pos is the share
of positive steps and R the mean MC score of the positive steps (1.0 when none). Per source file, keep the top
max(1, int(m * ratio)) of its m valid rollouts (ties in file order) and write them in original order.

Baselines with the same per-source budget: random (seeded), mixed (rollouts with both labels first), reliable
(highest R first), low_mc (lowest mean MC score first), full (every valid rollout).

Invalid rollouts are never ranked; they are counted by reason (broken_json, missing_image, no_steps, blank_step,
missing_score, score_out_of_range) in the printed table and in --report.

Examples:
  bis-prm select --annotations-dir VisualPRM400K-v1.1-Raw/annotations --ratio 0.1 --alpha 0.2 \\
      --output bis10.jsonl --format internvl
  bis-prm select --dataset OpenGVLab/VisualPRM400K-v1.1-Raw --method random --ratio 0.1 --output random10.parquet
"""


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name, help=help, description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    corpus = parser.add_mutually_exclusive_group(required=True)
    corpus.add_argument("--annotations-dir", help="Local corpus: annotations directory, corpus root, or zip.")
    corpus.add_argument("--dataset", help="Hub dataset repo id, e.g. OpenGVLab/VisualPRM400K-v1.1-Raw.")
    parser.add_argument("--revision", default=None, help="Hub revision of --dataset (branch, tag or commit).")
    parser.add_argument(
        "--download-images", action="store_true", help="With --dataset: also fetch and unzip images.zip (large)."
    )
    parser.add_argument("--method", choices=METHODS, default="bis", help="Selection method (default: bis).")
    parser.add_argument("--ratio", type=float, default=0.1, help="Fraction kept per source (default: 0.1).")
    parser.add_argument("--alpha", type=float, default=0.2, help="BIS smoothing term alpha (default: 0.2).")
    parser.add_argument("--tau", type=float, default=0.0, help="Positive step when score > tau (default: 0.0).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random baseline (default: 0).")
    parser.add_argument("--num-proc", type=int, default=None, help="Processes reading annotation files.")
    parser.add_argument(
        "--output", required=True, help="Output .jsonl or .parquet file, or a directory (datasets save_to_disk)."
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="hf",
        help="hf: HF PRM format (image, question, steps, labels, scores); internvl: the reference code's "
        "conversation JSONL, byte-compatible (default: hf).",
    )
    parser.add_argument("--report", help="Write per-source read/valid/kept/dropped-by-reason counts as JSON.")
    parser.add_argument("--plot", help="Write p_pos / R / BIS histograms of all vs kept rollouts (e.g. stats.png).")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="Push the subset (HF PRM format) to this repo.")
    parser.add_argument("--embed-images", action="store_true", help="With --push-to-hub: embed the image bytes.")
    parser.add_argument("--private", action="store_true", help="With --push-to-hub: create a private repo.")
    parser.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    corpus = ["--annotations-dir", args.annotations_dir] if args.annotations_dir else ["--dataset", args.dataset]
    words = ["bis-prm", "select", *corpus] + (["--revision", args.revision] if args.revision else [])
    for flag in ("method", "ratio", "alpha", "tau", "seed", "output", "format"):
        words += [f"--{flag}", str(getattr(args, flag))]
    if args.push_to_hub:
        words += ["--push-to-hub", args.push_to_hub] + (["--embed-images"] if args.embed_images else [])
    return shlex.join(words)


def format_table(report: dict) -> str:
    """The per-source read / valid / kept table printed by the command."""
    width = max([len("source"), len("total")] + [len(source) for source in report["sources"]])
    lines = [f"{'source':<{width}} {'read':>8} {'valid':>8} {'kept':>8}  dropped (invalid)"]
    rows = list(report["sources"].items()) + [("total", report["total"])]
    for source, counts in rows:
        invalid = ", ".join(f"{r}={counts['dropped'][r]}" for r in INVALID_REASONS if counts["dropped"][r])
        lines.append(f"{source:<{width}} {counts['read']:>8} {counts['valid']:>8} {counts['kept']:>8}  {invalid}")
    return "\n".join(lines)


def _error(message: str) -> int:
    print(f"bis-prm select: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.ratio <= 1.0:
        return _error(f"--ratio must be in (0, 1], got {args.ratio}")
    if args.annotations_dir and not os.path.exists(args.annotations_dir):
        return _error(f"annotations directory not found: {args.annotations_dir}")
    try:
        annotations_dir, root = resolve_visualprm400k(
            args.annotations_dir or args.dataset, revision=args.revision, download_images=args.download_images
        )
        rollouts = annotations_to_dataset(annotations_dir, num_proc=args.num_proc)
    except (OSError, ValueError) as err:
        return _error(str(err))
    scored = score_rollouts(rollouts, tau=args.tau, alpha=args.alpha)
    subset = select_subset(scored, method=args.method, ratio=args.ratio, alpha=args.alpha, seed=args.seed)
    params = {"corpus": args.dataset or args.annotations_dir, "revision": args.revision, "method": args.method}
    params.update({"ratio": args.ratio, "alpha": args.alpha, "tau": args.tau, "seed": args.seed})
    report = subset_report(scored, subset, params)
    print(format_table(report))

    write_subset(subset, args.output, format=args.format, image_root=root)
    print(f"wrote {len(subset)} rollouts ({args.format} format) to {args.output}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    if args.plot:
        from ..data.plots import plot_selection_histograms

        plot_selection_histograms(scored, subset, args.plot)
    if args.push_to_hub:
        from ..data.dataset_card import push_subset_to_hub

        prm = to_prm_format(subset, image_root=root)
        url = push_subset_to_hub(prm, args.push_to_hub, report, _command(args), args.embed_images, args.private)
        print(f"pushed to {url}")
    return 0
