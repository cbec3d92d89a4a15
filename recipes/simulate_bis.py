"""Paper-style comparison on the embedded sample: full data vs BIS-10 % vs random-10 %, over several seeds.

For each seed, a tiny random VLM is created (`make_tiny_vlm(seed=...)`) and trained with the tiny recipe on each
subset of the sample corpus, then evaluated on the sample benchmark at the fixed 0.5 threshold; the table reports
the mean ± std of the overall macro-F1 (micro over sources) per method.

    python recipes/simulate_bis.py --output-dir runs/simulate_bis
    python recipes/simulate_bis.py --budget epochs --epochs 6    # same epochs instead of the same steps

`--budget steps` (default) gives every method the recipe's `max_steps` (same compute: the question is which rollouts
to spend it on); `--budget epochs` gives every method the same number of passes over its data (full data then costs
10x the steps of a 10 % subset, as in the paper).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from bis_prm.data.formats import write_subset
from bis_prm.data.sample import make_sample
from bis_prm.data.selection import build_subset
from bis_prm.quickstart import TINY_RECIPE, train_and_evaluate
from bis_prm.testing import make_tiny_vlm

METHODS = {"full": {"method": "full"}, "bis": {"method": "bis"}, "random": {"method": "random"}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/simulate_bis"))
    parser.add_argument("--recipe", type=Path, default=TINY_RECIPE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--arch", default="qwen2_5_vl")
    parser.add_argument("--budget", choices=["steps", "epochs"], default="steps")
    parser.add_argument("--epochs", type=float, default=6.0, help="passes over each subset with --budget epochs")
    parser.add_argument("--batch-size", type=int, default=8, help="per-device train batch size (for --budget epochs)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = args.output_dir.resolve()
    sample = make_sample(out / "sample", seed=0)
    results = {method: [] for method in args.methods}
    sizes = {}
    for seed in args.seeds:
        base = make_tiny_vlm(args.arch, out / f"tiny-{args.arch}-seed{seed}", seed=seed)
        for method in args.methods:
            subset, _ = build_subset(
                sample.corpus_root, **METHODS[method], ratio=args.ratio, alpha=args.alpha, seed=seed, progress=False
            )
            sizes[method] = len(subset)
            run_dir = out / f"{method}-seed{seed}"
            write_subset(subset, run_dir / "subset.parquet")
            overrides = ["--seed", str(seed), "--save_strategy", "no", "--eval_ratio", "0"]
            if args.budget == "epochs":
                steps = math.ceil(args.epochs * len(subset) / args.batch_size)
                overrides += ["--max_steps", str(steps), "--per_device_train_batch_size", str(args.batch_size)]
            state, metrics = train_and_evaluate(
                run_dir / "subset.parquet", base, sample.benchmark_dir, run_dir, args.recipe, overrides=overrides
            )
            results[method].append(
                {
                    "seed": seed,
                    "steps": state["global_step"],
                    "overall_macro_f1": metrics["micro_over_sources"],
                    "auroc": metrics["auroc"],
                }
            )
            print(f"== {method} seed {seed}: overall macro-F1 {metrics['micro_over_sources']:.4f}", flush=True)

    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, default=str, indent=2))
    print(f"\nEmbedded sample, {args.arch} tiny PRM, budget: {args.budget}, seeds {args.seeds}, threshold 0.5 (fixed)")
    print("| data | rollouts | train steps | overall macro-F1 (mean ± std) | per seed | AUROC (mean ± std) |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for method, runs in results.items():
        scores = [100 * run["overall_macro_f1"] for run in runs]
        aurocs = [100 * run["auroc"] for run in runs]
        label = "full" if method == "full" else f"{method.upper() if method == 'bis' else method}-{args.ratio:.0%}"
        print(
            f"| {label} | {sizes[method]} | {runs[0]['steps']} | {_mean_std(scores)} | "
            f"{', '.join(f'{score:.2f}' for score in scores)} | {_mean_std(aurocs)} |"
        )


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


if __name__ == "__main__":
    main()
