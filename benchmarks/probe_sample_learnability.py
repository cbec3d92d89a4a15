"""Is the embedded sample learnable? Train a tiny random VLM PRM on a BIS subset of it and score the benchmark.

make_sample -> BIS top-`ratio` per source (inline, tau=0) -> tiny random VLM (`make_tiny_vlm` + `load_prm`) ->
plain AdamW loop over `PRMCollator` batches -> `score_steps` on the benchmark -> per-source macro-F1 at threshold 0.5
and the step-weighted overall. Prints two reference rows measured on the same benchmark: "all positive" (a PRM that
says "correct" everywhere) and "position prior" (the subset's positive rate per source and step index, >= 0.5), the
score of a PRM that ignores the image and the step text.

    python benchmarks/probe_sample_learnability.py --max-steps 600 --time-budget 240 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from bis_prm.data.sample import make_sample
from bis_prm.model.inference import score_steps
from bis_prm.model.modeling_prm import load_prm
from bis_prm.model.processing_prm import PRMCollator
from bis_prm.testing import make_tiny_vlm


def bis_score(scores: list[float], tau: float = 0.0, alpha: float = 0.2) -> float:
    positives = [score for score in scores if score > tau]
    p_pos = len(positives) / len(scores)
    reliability = sum(positives) / len(positives) if positives else 1.0
    return (p_pos * (1.0 - p_pos) + alpha) * reliability


def load_subset(paths, ratio: float, alpha: float) -> list[dict]:
    """Top `max(1, int(m * ratio))` rollouts by BIS per annotation file, ties in file order, in file order."""
    examples = []
    for file in sorted(paths.annotations_dir.glob("*.jsonl")):
        rows = [json.loads(line) for line in file.open(encoding="utf-8")]
        keep = max(1, int(len(rows) * ratio))
        ranked = sorted(
            range(len(rows)),
            key=lambda i: (-bis_score([s["score"] for s in rows[i]["steps_with_score"]], alpha=alpha), i),
        )
        for index in sorted(ranked[:keep]):
            row = rows[index]
            images = row["image"] if isinstance(row["image"], list) else [row["image"]]
            examples.append(
                {
                    "source": file.stem,
                    "image": [str(paths.corpus_root / image) for image in images],
                    "question": row["question"],
                    "steps": [step["step"] for step in row["steps_with_score"]],
                    "labels": [float(step["score"] > 0) for step in row["steps_with_score"]],
                }
            )
    return examples


def macro_f1(rows: list[dict], predictions: list[list[bool]]) -> tuple[float, dict[str, float]]:
    """Per source (F1(+1) + F1(-1)) / 2 over non-neutral steps; overall weighted by counted steps."""
    counts = defaultdict(lambda: [0, 0, 0, 0])  # tp, fp, fn, tn of the positive class
    for row, predicted in zip(rows, predictions, strict=True):
        for label, positive in zip(row["response"]["process_correctness"], predicted, strict=True):
            if label != 0:
                counts[row["data_source"]][(0 if label == 1 else 1) if positive else (2 if label == 1 else 3)] += 1

    def f1(tp, fp, fn):
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    per_source = {source: (f1(tp, fp, fn) + f1(tn, fn, fp)) / 2 for source, (tp, fp, fn, tn) in counts.items()}
    total = sum(sum(c) for c in counts.values())
    overall = sum(per_source[source] * sum(counts[source]) for source in counts) / total
    return overall, per_source


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=None, help="Where to write the sample and the tiny model (temp dir).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-rollouts", type=int, default=4000)
    parser.add_argument("--arch", default="qwen2_5_vl")
    parser.add_argument("--head", default="yes_no")
    parser.add_argument("--ratio", type=float, default=0.1, help="BIS keep ratio per source (1.0: full corpus).")
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--time-budget", type=float, default=240.0, help="Stop training after this many seconds.")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="probe_sample_"))
    start = time.perf_counter()
    paths = make_sample(output_dir / "sample", seed=args.seed, num_rollouts=args.num_rollouts)
    print(f"sample written in {time.perf_counter() - start:.1f}s to {paths.root}")
    train = load_subset(paths, args.ratio, args.alpha)
    labels = [label for example in train for label in example["labels"]]
    print(f"train subset: {len(train)} rollouts, {len(labels)} steps, {1 - sum(labels) / len(labels):.1%} negative")

    model, processor = load_prm(make_tiny_vlm(args.arch, output_dir / "tiny", seed=args.seed), head=args.head)
    collator = PRMCollator(processor, step_token=model.config.step_token)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    print(f"model: {args.arch}, {sum(p.numel() for p in model.parameters()):,} parameters, head {args.head}")

    rng = random.Random(args.seed)
    model.train()
    start, losses, step = time.perf_counter(), [], 0
    for step in range(1, args.max_steps + 1):
        # linear warmup, cosine decay to 0 at max_steps
        scale = min(1.0, step / args.warmup_steps) * 0.5 * (1 + math.cos(math.pi * (step - 1) / args.max_steps))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * scale
        loss = model(**collator(rng.sample(train, args.batch_size))).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            print(f"step {step}: loss {sum(losses[-50:]) / 50:.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
        if time.perf_counter() - start > args.time_budget:
            break
    train_time = time.perf_counter() - start

    bench = [json.loads(line) for line in paths.benchmark_file.open(encoding="utf-8")]
    examples = [
        {
            "image": [str(paths.benchmark_dir / i) for i in row["image"]],
            "question": row["question"],
            "steps": row["response"]["steps"],
        }
        for row in bench
    ]
    start = time.perf_counter()
    scores = score_steps(model, processor, examples, batch_size=32)
    eval_time = time.perf_counter() - start

    prior = defaultdict(list)
    for example in train:
        for index, label in enumerate(example["labels"]):
            prior[(example["source"], index)].append(label)
    position = [
        [
            sum(prior[(r["data_source"], i)] or [1.0]) / len(prior[(r["data_source"], i)] or [1.0]) >= 0.5
            for i in range(len(r["response"]["steps"]))
        ]
        for r in bench
    ]
    rows = {
        "all positive": macro_f1(bench, [[True] * len(r["response"]["steps"]) for r in bench]),
        "position prior": macro_f1(bench, position),
        "tiny PRM": macro_f1(bench, [[score >= 0.5 for score in row] for row in scores]),
    }
    sources = sorted(rows["tiny PRM"][1])
    first, last = losses[:50], losses[-50:]
    print(
        f"\ntrained {step} steps x {args.batch_size} in {train_time:.0f}s (lr {args.lr}, {args.threads} thread(s)); "
        f"loss first/last 50 steps {sum(first) / len(first):.4f} / {sum(last) / len(last):.4f}; "
        f"benchmark scored in {eval_time:.0f}s"
    )
    print(f"{'macro-F1 @0.5':16s}" + "".join(f"{s:>12s}" for s in sources) + f"{'overall':>10s}")
    for name, (overall, per_source) in rows.items():
        print(f"{name:16s}" + "".join(f"{per_source[s]:12.3f}" for s in sources) + f"{overall:10.3f}")


if __name__ == "__main__":
    main()
