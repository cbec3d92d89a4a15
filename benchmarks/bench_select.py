"""Benchmark `bis-prm select` against a plain single-process JSON-lines implementation of the same selection.

Both run as fresh processes (imports included, no `datasets` cache) on the same generated corpus, in the same run;
the script prints wall time, peak RSS and throughput of each, the time ratio, and checks that both wrote the same
bytes. Target: `bis-prm select` at most half the baseline's time, under 2 GB peak RSS.

    python -m benchmarks.bench_select --corpus /tmp/bench_corpus            # 38 sources x 10527 = 400k rollouts
    python -m benchmarks.bench_select --corpus /tmp/small --rollouts 500    # quick check
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_select_streaming import GENERATE

# the test oracle, run as its own process: the baseline
REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "oracles" / "reference_selection.py"


def run_measured(command: list[str]) -> tuple[float, float, float]:
    """Run `command`; return wall seconds, CPU seconds (user + sys, children included) and peak RSS in MiB."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"command failed: {' '.join(command)}")
    # RUSAGE of the process alone (wait4) plus the pool workers it spawned and reaped
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/bis_prm_bench_corpus"))
    parser.add_argument("--sources", type=int, default=38)
    parser.add_argument("--rollouts", type=int, default=10527, help="rollouts per source")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--num-proc", type=int, default=None, help="--num-proc of bis-prm select")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    annotations = args.corpus / "annotations"
    if not annotations.is_dir():
        print(f"generating {args.sources} x {args.rollouts} rollouts in {args.corpus} ...", flush=True)
        # in a child process, so that this one stays small: see GENERATE
        generate = [sys.executable, "-c", GENERATE, str(args.corpus), str(args.sources), str(args.rollouts)]
        subprocess.run(generate, check=True)
    files = sorted(annotations.glob("*.jsonl"))
    size = sum(path.stat().st_size for path in files)
    rollouts = sum(path.read_bytes().count(b"\n") for path in files)  # also warms the page cache for both
    print(f"corpus: {len(files)} files, {rollouts} rollouts, {size / 2**20:.0f} MiB")

    out = args.corpus.parent / f"{args.corpus.name}_outputs"
    out.mkdir(exist_ok=True)
    selection = ["--ratio", str(args.ratio), "--alpha", str(args.alpha)]
    baseline = [sys.executable, str(REFERENCE), "--annotations-dir", str(annotations)]
    baseline += ["--output", str(out / "baseline.jsonl"), *selection]
    ours = [sys.executable, "-m", "bis_prm", "select", "--annotations-dir", str(annotations), "--format", "internvl"]
    ours += ["--output", str(out / "bis_prm.jsonl"), *selection]
    ours += ["--num-proc", str(args.num_proc)] if args.num_proc else []

    results = {"baseline (json lines)": [], "bis-prm select": []}
    for _ in range(args.repeats):
        results["baseline (json lines)"].append(run_measured(baseline))
        results["bis-prm select"].append(run_measured(ours))
    print(f"load average before: {os.getloadavg()[0]:.1f} (timings on a shared machine are noisy; see CPU time)")
    print(f"{'implementation':<24} {'wall (s)':>9} {'CPU (s)':>8} {'peak RSS (MiB)':>15} {'rollouts/s':>11}")
    best = {}
    for name, runs in results.items():
        wall, cpu, rss = min(r[0] for r in runs), min(r[1] for r in runs), max(r[2] for r in runs)
        best[name] = wall, cpu
        print(f"{name:<24} {wall:>9.2f} {cpu:>8.2f} {rss:>15.0f} {rollouts / wall:>11.0f}")
    ours, baseline = best["bis-prm select"], best["baseline (json lines)"]
    same = (out / "baseline.jsonl").read_bytes() == (out / "bis_prm.jsonl").read_bytes()
    print(f"time ratio bis-prm / baseline: wall {ours[0] / baseline[0]:.3f}, CPU {ours[1] / baseline[1]:.3f} "
          f"(target <= 0.5); identical output: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
