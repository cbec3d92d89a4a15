"""`bis-prm select`: score VisualPRM400K-style rollouts and write a BIS (or baseline) subset."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from bis_prm.cli import (
    CommandError,
    check_hub_write_access,
    hub_repo_id,
    positive_int,
    probability,
    writable_file,
)
from bis_prm.data.formats import FORMATS, LABEL_MODES, check_label_mode, check_output_path, write_subset
from bis_prm.data.selection import LAYOUTS, METHODS, run_selection
from bis_prm.data.visualprm400k import INVALID_REASONS

_DESCRIPTION = """\
Score every rollout of a VisualPRM400K-style corpus (<root>/annotations/<source>.jsonl) with the Balanced-Information
Score BIS = (p_pos * (1 - p_pos) + alpha) * R, where a step is positive when its MC score is > tau, p_pos is the share
of positive steps and R the mean MC score of the positive steps (1.0 when none). Per source file, keep the top
max(1, int(m * ratio)) of its m valid rollouts (ties in file order) and write them in original order.

Baselines with the same per-source budget: random (seeded), mixed (rollouts with both labels first), reliable
(highest R first), low_mc (lowest mean MC score first), full (every valid rollout).

Invalid rollouts are never ranked; they are counted by reason (broken_json, invalid_utf8, invalid_text, missing_image,
image_outside_root, no_steps, blank_step, missing_score, score_out_of_range) in the printed table, listed with their
file and line in --report (and --dropped). Image paths must stay inside the corpus root: nothing outside it is read,
embedded or uploaded.

Examples:
  bis-prm select --annotations-dir VisualPRM400K-v1.1-Raw/annotations --ratio 0.1 --alpha 0.2 \\
      --output bis10.jsonl --format internvl
  bis-prm select --dataset OpenGVLab/VisualPRM400K-v1.1-Raw --method random --ratio 0.1 --output random10.parquet
  bis-prm select --annotations-dir VisualPRM400K-v1.1-Raw --streaming --output bis10.jsonl   # larger than memory
"""


def _ratio(value: str) -> float:
    ratio = probability(value)
    if ratio == 0.0:
        raise argparse.ArgumentTypeError("must be in (0, 1], got 0")
    return ratio


def _alpha(value: str) -> float:
    try:
        alpha = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not alpha >= 0.0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return alpha


def _tau(value: str) -> float:
    tau = probability(value)
    if tau == 1.0:
        raise argparse.ArgumentTypeError("must be in [0, 1), got 1")
    return tau


def add_parser(subparsers, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name, help=help, description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    corpus = parser.add_mutually_exclusive_group(required=True)
    corpus.add_argument(
        "--annotations-dir",
        help="Local corpus: annotations directory, corpus root, or zip; or a stepwise corpus (JSONL / JSON / Parquet "
        "file or directory of them, one source per file).",
    )
    corpus.add_argument(
        "--dataset", type=hub_repo_id, help="Hub dataset repo id, e.g. OpenGVLab/VisualPRM400K-v1.1-Raw."
    )
    parser.add_argument("--revision", default=None, help="Hub revision of --dataset (branch, tag or commit).")
    stepwise = parser.add_argument_group(
        "stepwise corpora",
        "Any Monte-Carlo-annotated stepwise corpus (a question, a list of steps, one score per step), text-only or "
        "with images; TRL's stepwise format (prompt, completions, labels) is recognised. With hard labels only, R is "
        "1 and BIS ranks by label mixture alone.",
    )
    stepwise.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="auto: stepwise for local files that are not VisualPRM400K annotations or when a column is named; "
        "visualprm400k otherwise (default: auto).",
    )
    for field, default in (("question", "question"), ("steps", "steps"), ("scores", "mc_scores")):
        stepwise.add_argument(f"--{field}-column", help=f"Column of the {field} (default: {default}).")
    stepwise.add_argument("--image-column", help="Column of the image path(s), if any (default: image).")
    stepwise.add_argument("--source-column", help="Column of the source (default: one source per file).")
    parser.add_argument(
        "--download-images", action="store_true", help="With --dataset: also fetch and unzip images.zip (large)."
    )
    parser.add_argument("--method", choices=METHODS, default="bis", help="Selection method (default: bis).")
    parser.add_argument(
        "--ratio", type=_ratio, default=0.1, help="Fraction kept per source, in (0, 1] (default: 0.1)."
    )
    parser.add_argument("--alpha", type=_alpha, default=0.2, help="BIS smoothing term alpha >= 0 (default: 0.2).")
    parser.add_argument(
        "--tau", type=_tau, default=0.0, help="Positive step when score > tau, in [0, 1) (default: 0)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random baseline (default: 0).")
    parser.add_argument(
        "--num-proc", type=positive_int, default=None, help="Files read at once (default: the number of CPUs)."
    )
    parser.add_argument(
        "--output", required=True, help="Output .jsonl or .parquet file, or a directory (datasets save_to_disk)."
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="hf",
        help="hf: HF PRM format (image, image_root, question, steps, labels, scores); internvl: the reference code's "
        "conversation JSONL, byte-compatible (default: hf).",
    )
    parser.add_argument(
        "--label-mode",
        choices=LABEL_MODES,
        default="hard",
        help="With --format internvl, the gpt value: hard, the labels 1.0/0.0 (MC score > tau); soft, the MC scores "
        "(the reference code's converted_soft). The hf format holds both (default: hard).",
    )
    parser.add_argument(
        "--report",
        type=writable_file,
        help="Write per-source read/valid/kept/dropped counts and the file and line of every dropped rollout (JSON).",
    )
    parser.add_argument(
        "--dropped", type=writable_file, help='Write one line per dropped rollout: {"file", "line", "reason"} (JSONL).'
    )
    parser.add_argument(
        "--plot", type=writable_file, help="Write p_pos / R / BIS histograms of all vs kept rollouts (e.g. stats.png)."
    )
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", type=hub_repo_id, help="Push the subset (HF PRM format) to this repo."
    )
    parser.add_argument("--embed-images", action="store_true", help="With --push-to-hub: embed the image bytes.")
    parser.add_argument("--private", action="store_true", help="With --push-to-hub: create a private repo.")
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="For corpora larger than memory: read the annotation files twice, block by block (score and pick, then "
        "write the kept rows), holding neither the corpus nor its text in memory; same output bytes and report. "
        "Writes .jsonl or .parquet files (not directories) and --plot; not with --push-to-hub or --num-proc.",
    )
    parser.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    corpus = ["--annotations-dir", args.annotations_dir] if args.annotations_dir else ["--dataset", args.dataset]
    words = ["bis-prm", "select", *corpus] + (["--revision", args.revision] if args.revision else [])
    for flag in ("method", "ratio", "alpha", "tau", "seed", "output", "format"):
        words += [f"--{flag}", str(getattr(args, flag))]
    if args.label_mode != "hard":
        words += ["--label-mode", args.label_mode]
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


def _check(args: argparse.Namespace) -> None:
    """Everything that can be checked before reading the corpus."""
    if args.annotations_dir and not os.path.exists(args.annotations_dir):
        raise CommandError(f"annotations directory not found: {args.annotations_dir}")
    try:
        check_output_path(args.output, args.format)
        check_label_mode(args.label_mode, args.format)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.embed_images and not args.push_to_hub:
        raise CommandError("--embed-images needs --push-to-hub")
    if args.streaming:
        _check_streaming(args)
    if args.push_to_hub:
        check_hub_write_access(args.push_to_hub)


def _check_streaming(args: argparse.Namespace) -> None:
    if Path(args.output).suffix == "":
        raise CommandError("--streaming writes a .jsonl or .parquet file; write a directory without --streaming")
    if args.push_to_hub:
        raise CommandError("--push-to-hub needs the subset in memory: run without --streaming to push it")
    if args.num_proc:
        raise CommandError("--streaming reads one file at a time: drop --num-proc, or --streaming")


def _select_streaming(args: argparse.Namespace) -> dict:
    from bis_prm.data.streaming import stream_selection

    try:
        report = stream_selection(
            args.annotations_dir or args.dataset,
            args.output,
            method=args.method,
            ratio=args.ratio,
            alpha=args.alpha,
            tau=args.tau,
            seed=args.seed,
            format=args.format,
            label_mode=args.label_mode,
            revision=args.revision,
            download_images=args.download_images,
            plot=args.plot,
        )
    except (OSError, ValueError) as err:
        raise CommandError(str(err)) from None
    print(format_table(report))
    _print_written(args, report["total"]["kept"])
    return report


def _print_written(args: argparse.Namespace, count: int) -> None:
    soft = ", MC scores as targets" if args.label_mode == "soft" else ""
    print(f"wrote {count} rollouts ({args.format} format{soft}) to {args.output}")


def _write_reports(args: argparse.Namespace, report: dict) -> None:
    """--report and --dropped, and where the dropped rows are listed."""
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    if args.dropped:
        with open(args.dropped, "w", encoding="utf-8") as f:
            for reason, rows in report["dropped_rows"].items():
                f.writelines(json.dumps({**row, "reason": reason}) + "\n" for row in rows)
    dropped = sum(len(rows) for rows in report["dropped_rows"].values())
    if dropped:
        where = args.report or args.dropped or "--report or --dropped"
        print(f"{dropped} invalid rollouts were dropped; their files and lines: {where}", file=sys.stderr)


def _columns(args: argparse.Namespace) -> dict[str, str] | None:
    """The stepwise column names given on the command line (the others keep their defaults), or `None`."""
    names = ("question", "steps", "scores", "image", "source")
    given = {name: getattr(args, f"{name}_column") for name in names if getattr(args, f"{name}_column")}
    return given or None


def run(args: argparse.Namespace) -> int:
    _check(args)
    if args.streaming:
        _write_reports(args, _select_streaming(args))
        return 0
    try:
        selection = run_selection(
            args.annotations_dir or args.dataset,
            layout=args.layout,
            columns=_columns(args),
            method=args.method,
            ratio=args.ratio,
            alpha=args.alpha,
            tau=args.tau,
            seed=args.seed,
            num_proc=args.num_proc,
            revision=args.revision,
            download_images=args.download_images,
        )
    except (OSError, ValueError) as err:
        raise CommandError(str(err)) from None
    report = selection.report
    print(format_table(report))

    write_subset(
        selection.subset,
        args.output,
        args.format,
        image_root=selection.image_root,
        report=report,
        label_mode=args.label_mode,
    )
    _print_written(args, len(selection.subset))
    _write_reports(args, report)
    if args.plot:
        from bis_prm.data.plots import plot_selection_histograms

        plot_selection_histograms(selection.scored, selection.subset, args.plot)
    if args.push_to_hub:
        from bis_prm.data.dataset_card import push_subset_to_hub

        url = push_subset_to_hub(
            selection.to_prm(), args.push_to_hub, report, _command(args), args.embed_images, args.private
        )
        print(f"pushed to {url}")
    return 0
