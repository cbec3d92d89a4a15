"""How fast and how wasteful `bis-prm eval`'s scoring is, on a benchmark the size and shape of VisualProcessBench.

    python -m benchmarks.bench_eval                           # CPU: tiny PRM, 2,866 rows, images 300-1,500 px
    python -m benchmarks.bench_eval --rows 600                # a quicker look
    python -m benchmarks.bench_eval --random-init-7b          # GPU: a Qwen2.5-VL-7B-shaped PRM in bf16

The benchmark is written by `bis_prm.testing.write_visualprocessbench` (the real file's five sources and
proportions, 4-20 steps per row, image sides uniform in 300-1,500 px, 5 % of rows with two images). The PRM is a
random Qwen2.5-VL whose processor has the real `max_pixels` (1,003,520: up to 1,280 tokens per image), so image
tokens dominate the rows as they do on the real benchmark (its one vision block uses windowed attention, as 28 of
the 32 blocks of the real model do). On a CPU the model runs on `--model-threads` threads (default 1), so that the
loader workers get the other cores, as they would next to a GPU. In one run it measures, with the same
`StepScorer`:

1. the v0.1 batching: file order, 8 rows per batch, each padded to its longest row, images decoded in the main
   process;
2. the token-budget batching of `bis-prm eval` (longest rows first, `--batch-size` rows and `--max-batch-tokens`
   tokens at most), images decoded in the main process;
3. the same batches, rendered by `--workers` DataLoader workers;

and reports the fraction of computed tokens that are padding (goal: at most 5 %), rows/s of each, the time the model
waited for rendered batches, whether 2 and 3 give identical scores, and the largest difference between 2 and scoring
each of `--check-rows` rows alone (batch size 1). On a GPU, `--random-init-7b` reports the wall time of the full
benchmark with a 7B-shaped PRM (goal: at most 5 minutes on one H100).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bis_prm.evaluation.visualprocessbench import load_visualprocessbench
from bis_prm.model.inference import StepScorer
from bis_prm.model.modeling_prm import load_prm
from bis_prm.testing import QWEN2_5_VL_7B_SHAPES, REAL_MAX_PIXELS, make_tiny_vlm, write_visualprocessbench


def run(scorer: StepScorer, rows: list[dict], batches: list[list[int]]) -> tuple[dict[int, list[float]], dict]:
    """Score `rows` in `batches`; return the scores and the figures of the pass."""
    start = time.perf_counter()
    scores = {row: values for row, values, failure in scorer.iter_scores(rows, batches) if failure is None}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stats = scorer.stats
    figures = {
        "rows": len(scores),
        "batches": stats.batches,
        "seconds": round(seconds, 2),
        "rows_per_second": round(len(scores) / seconds, 2),
        "padding_fraction": round(stats.padding_fraction, 4),
        "seconds_waiting_for_data": round(stats.seconds_waiting_for_data, 2),
    }
    return scores, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2866, help="Benchmark rows (the real file has 2,866).")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bis_prm_bench_eval")
    parser.add_argument("--batch-size", type=int, default=8, help="Most rows per batch of the new batching.")
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of pass 3.")
    parser.add_argument("--model-threads", type=int, default=1, help="CPU only: torch threads of the model.")
    parser.add_argument("--check-rows", type=int, default=200, help="Rows scored alone to compare with pass 2.")
    parser.add_argument("--random-init-7b", action="store_true", help="A Qwen2.5-VL-7B-shaped PRM on the GPU.")
    parser.add_argument("--output-json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()

    bench = args.workdir / f"benchmark_{args.rows}"
    if not (bench / "test.jsonl").is_file():
        print(f"writing a {args.rows}-row benchmark to {bench} ...", flush=True)
        write_visualprocessbench(bench, rows=args.rows)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.model_threads)
    shape = "7b" if args.random_init_7b else "tiny"
    base = args.workdir / f"qwen2_5_vl_{shape}"
    if not (base / "config.json").is_file():
        dtype = torch.bfloat16 if args.random_init_7b else None
        shapes = QWEN2_5_VL_7B_SHAPES if args.random_init_7b else {"vision_config": {"fullatt_block_indexes": []}}
        make_tiny_vlm("qwen2_5_vl", base, shapes=shapes, max_pixels=REAL_MAX_PIXELS, dtype=dtype, device=device)
    start = time.perf_counter()
    model, processor = load_prm(base, head="linear", dtype="auto", device_map={"": device})
    load_seconds = time.perf_counter() - start
    rows = load_visualprocessbench(bench).rows
    print(f"{len(rows)} rows, {sum(len(r['steps']) for r in rows)} steps; PRM loaded in {load_seconds:.1f} s")

    new = StepScorer(model, processor, args.batch_size, args.max_batch_tokens, num_workers=0)
    lengths = new.lengths(rows)
    planned = new.plan(rows, lengths)
    figures = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "model": shape}
    figures["rows"], figures["image_tokens_estimated"] = len(rows), sum(lengths)
    figures["load_seconds"] = round(load_seconds, 2)
    if not args.random_init_7b:
        old = StepScorer(model, processor, max_batch_size=8, num_workers=0)
        file_order = [list(range(start, min(start + 8, len(rows)))) for start in range(0, len(rows), 8)]
        _, figures["v0.1 batching, 0 workers"] = run(old, rows, file_order)
        print(json.dumps(figures, indent=2), flush=True)
        scores, figures["token batching, 0 workers"] = run(new, rows, planned)
        print(json.dumps(figures, indent=2), flush=True)
    workers = StepScorer(model, processor, args.batch_size, args.max_batch_tokens, num_workers=args.workers)
    worker_scores, figures[f"token batching, {args.workers} workers"] = run(workers, rows, planned)
    if not args.random_init_7b:
        figures["identical scores with and without workers"] = worker_scores == scores
        alone = StepScorer(model, processor, max_batch_size=1, num_workers=args.workers)
        checked = rows[: args.check_rows]
        singles, _ = run(alone, checked, [[row] for row in range(len(checked))])
        figures[f"max |score - score at batch size 1| over {len(checked)} rows"] = max(
            abs(a - b) for row in singles for a, b in zip(singles[row], scores[row], strict=True)
        )
        figures["padding: v0.1 -> token batching"] = (
            f"{figures['v0.1 batching, 0 workers']['padding_fraction']:.1%} -> "
            f"{figures['token batching, 0 workers']['padding_fraction']:.1%}"
        )
        figures["rows/s: 0 -> N workers"] = (
            f"{figures['token batching, 0 workers']['rows_per_second']} -> "
            f"{figures[f'token batching, {args.workers} workers']['rows_per_second']}"
        )
    print(json.dumps(figures, indent=2))
    if args.output_json:
        args.output_json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
