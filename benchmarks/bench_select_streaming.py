"""Peak memory of `bis-prm select --streaming` against the in-memory `bis-prm select`, on a VisualPRM400K-sized corpus.

Both run as fresh processes (imports included) on the same generated corpus, one after the other; the script prints
wall time, CPU time and peak RSS of each, what the peak RSS is made of (anonymous memory vs mapped files, sampled
from /proc), the ratio of the peak RSS figures (goal: streaming below 25 % of in-memory), and checks that both wrote
the same bytes (the subset, its selection report and --report).

    python -m benchmarks.bench_select_streaming --corpus /tmp/bis_prm_bench_corpus     # 38 sources x 10527 = 400k
    python -m benchmarks.bench_select_streaming --corpus /tmp/small --rollouts 500      # quick check
    python -m benchmarks.bench_select_streaming --outputs hf.jsonl hf.parquet internvl.jsonl --method random
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

# This process imports nothing heavy (the corpus is generated in a child process): a child's peak RSS, as `wait4`
# reports it, starts from its parent's RSS at the fork, so importing bis_prm here (torch, ~0.7 GiB) would put a floor
# under both figures.
GENERATE = (
    "import sys; from bis_prm.testing import make_corpus; make_corpus(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))"
)
OUTPUTS = {"hf.jsonl": ("hf", ".jsonl"), "hf.parquet": ("hf", ".parquet"), "internvl.jsonl": ("internvl", ".jsonl")}


def _memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of a running process, in KiB (empty once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "RssAnon", "RssFile")))
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return {name: int(value.split()[0]) for name, value in fields.items()}


def run_measured(command: list[str]) -> dict[str, float]:
    """
    Run `command`; return wall and CPU seconds (user + sys), the peak RSS in MiB (the kernel's, from `wait4`) and
    the anonymous and file-backed (mapped files: libraries, memory-mapped Arrow files) parts of the largest RSS seen
    while polling /proc every 20 ms.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    largest = {}
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        sample = _memory(process.pid)
        if sample.get("VmRSS", 0) > largest.get("VmRSS", 0):
            largest = sample
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"command failed: {' '.join(command)}\n{stderr[-2000:]}")
    return {
        "wall": elapsed,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_rss": usage.ru_maxrss / 1024,
        "anon_at_peak": largest.get("RssAnon", 0) / 1024,
        "file_at_peak": largest.get("RssFile", 0) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/bis_prm_bench_corpus"), help="generated if absent")
    parser.add_argument("--sources", type=int, default=38)
    parser.add_argument("--rollouts", type=int, default=10527, help="rollouts per source")
    parser.add_argument("--method", default="bis")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--outputs", nargs="+", choices=OUTPUTS, default=["hf.jsonl"], help="output kinds compared")
    args = parser.parse_args()

    annotations = args.corpus / "annotations"
    if not annotations.is_dir():
        print(f"generating {args.sources} x {args.rollouts} rollouts in {args.corpus} ...", flush=True)
        subprocess.run(
            [sys.executable, "-c", GENERATE, str(args.corpus), str(args.sources), str(args.rollouts)], check=True
        )
    files = sorted(annotations.glob("*.jsonl"))
    size = sum(path.stat().st_size for path in files)
    rollouts = sum(path.read_bytes().count(b"\n") for path in files)  # also warms the page cache for both
    print(f"corpus: {len(files)} files, {rollouts} rollouts, {size / 2**20:.0f} MiB")
    print(f"{'output':<15} {'mode':<10} {'wall (s)':>9} {'CPU (s)':>8} {'peak RSS (MiB)':>15} {'anon / file':>13}")

    for kind in args.outputs:
        fmt, suffix = OUTPUTS[kind]
        results, written = {}, {}
        for mode in ("in-memory", "streaming"):
            out = args.corpus.parent / f"{args.corpus.name}_streaming_bench" / mode
            out.mkdir(parents=True, exist_ok=True)
            output, report = out / f"subset{suffix}", out / "report.json"
            command = [sys.executable, "-m", "bis_prm", "select", "--annotations-dir", str(annotations)]
            command += ["--method", args.method, "--ratio", str(args.ratio), "--alpha", str(args.alpha)]
            command += ["--format", fmt, "--output", str(output), "--report", str(report)]
            command += ["--streaming"] if mode == "streaming" else []
            results[mode] = run_measured(command)
            written[mode] = [path.read_bytes() for path in (output, report, out / "subset.selection.json")]
            r = results[mode]
            split = f"{r['anon_at_peak']:.0f} / {r['file_at_peak']:.0f}"
            print(f"{kind:<15} {mode:<10} {r['wall']:>9.1f} {r['cpu']:>8.1f} {r['peak_rss']:>15.0f} {split:>13}")
        ratio = results["streaming"]["peak_rss"] / results["in-memory"]["peak_rss"]
        same = written["streaming"] == written["in-memory"]
        print(f"{kind:<15} peak RSS streaming / in-memory: {ratio:.1%} (goal < 25 %); identical output and reports: "
              f"{same}; {len(written['streaming'][0]) / 2**20:.0f} MiB written", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
