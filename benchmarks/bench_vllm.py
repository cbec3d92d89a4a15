"""A multimodal PRM served by vLLM: do vLLM's `/pooling` step probabilities equal `score_steps`, and how fast are they?

    python -m benchmarks.bench_vllm                          # GPU: a random Qwen2.5-VL PRM (head_dim 64), 200 rows
    python -m benchmarks.bench_vllm --random-init-7b         # GPU: a Qwen2.5-VL-7B-shaped PRM in bf16
    python -m benchmarks.bench_vllm --model PATH             # GPU: a saved PRM (text or multimodal)
    python -m benchmarks.bench_vllm --text --rows 50         # CPU or GPU: a tiny text PRM (the CPU test's setting)

The rows come from `bis_prm.testing.write_visualprocessbench` (VisualProcessBench's sources and proportions, 4-20
steps, images of 300-1,500 px, some rows with two). The PRM is saved by bis_prm and served by
`vllm_serve_command` on 127.0.0.1 (with `--vllm-python`, default this interpreter); the rows are scored twice:
in-process by `StepScorer` (on the GPU when there is one) and through the server by `VLLMScorer` (images sent as
data URLs in vLLM's chat form of `/pooling`). It prints the largest |difference| of a step probability, the rows
either side could not score, and rows/s of each. vLLM's CPU build serves text models only (its torchvision does not
load beside the CPU torch), so without a GPU only `--text` runs; tests/test_vllm.py proves text PRMs on a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bis_prm.data.prompt import ExampleError
from bis_prm.evaluation.visualprocessbench import load_visualprocessbench
from bis_prm.model.inference import StepScorer
from bis_prm.model.modeling_prm import load_prm
from bis_prm.serving.vllm import CPU_ARGS, VLLMScorer, vllm_serve_command
from bis_prm.testing import (
    QWEN2_5_VL_7B_SHAPES,
    REAL_MAX_PIXELS,
    make_tiny_lm,
    make_tiny_vlm,
    write_visualprocessbench,
)

# A random Qwen2.5-VL whose attention heads are 64 wide (the tiny default, 16, is below what vLLM's kernels take),
# with room for two real-size images per row.
SMALL_VLM_SHAPES = {
    "text_config": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 10000.0},
    },
    "vision_config": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_heads": 2,
        "out_hidden_size": 128,
        "fullatt_block_indexes": [],
    },
}
TEXT_SHAPES = {**SMALL_VLM_SHAPES["text_config"], "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _has_vllm(python: str) -> bool:
    finds = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    return subprocess.run([python, "-c", finds], capture_output=True, timeout=120).returncode == 0


def build_prm(args: argparse.Namespace, device: str) -> Path:
    """The PRM to serve: `--model`, or a random one saved by bis_prm under `--workdir`."""
    if args.model is not None:
        return args.model
    name = "text" if args.text else ("qwen2_5_vl_7b" if args.random_init_7b else "qwen2_5_vl_small")
    prm = args.workdir / f"{name}_prm"
    if (prm / "config.json").is_file():
        return prm
    base = args.workdir / f"{name}_base"
    if args.text:
        make_tiny_lm("qwen2", base, **TEXT_SHAPES)
    else:
        shapes = QWEN2_5_VL_7B_SHAPES if args.random_init_7b else SMALL_VLM_SHAPES
        dtype = torch.bfloat16 if args.random_init_7b else None
        make_tiny_vlm("qwen2_5_vl", base, shapes=shapes, max_pixels=REAL_MAX_PIXELS, dtype=dtype, device=device)
    model, processor = load_prm(base, head="linear", dtype="auto")
    model.save_pretrained(prm)
    processor.save_pretrained(prm)
    return prm


def rows_for(args: argparse.Namespace) -> list[dict]:
    bench = args.workdir / f"benchmark_{args.rows}"
    if not (bench / "test.jsonl").is_file():
        write_visualprocessbench(bench, rows=args.rows)
    rows = load_visualprocessbench(bench).rows
    if args.text:  # the same questions and steps without their figures
        rows = [{"question": row["question"], "steps": row["steps"]} for row in rows]
    return rows


def start_server(command: list[str], log: Path, timeout_s: float) -> subprocess.Popen:
    """Start vLLM in its own process group and wait (bounded) until `/health` answers."""
    import httpx

    port = command[command.index("--port") + 1]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(process)
    sys.exit(f"vLLM did not start (exit code {process.returncode}); the end of {log}:\n{log.read_text()[-4000:]}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def timed(score, rows: list[dict]) -> tuple[list, float]:
    start = time.perf_counter()
    results = score(rows)
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200, help="Generated benchmark rows.")
    parser.add_argument("--model", type=Path, default=None, help="A saved PRM instead of a random one.")
    parser.add_argument("--random-init-7b", action="store_true", help="A Qwen2.5-VL-7B-shaped PRM in bf16.")
    parser.add_argument("--text", action="store_true", help="A tiny text PRM, rows without images (runs on a CPU).")
    parser.add_argument("--vllm-python", default=sys.executable, help="The Python whose vLLM serves the PRM.")
    parser.add_argument("--vllm-args", default="", help="More arguments for vLLM, e.g. '--max-model-len 16384'.")
    parser.add_argument("--batch-size", type=int, default=8, help="In-process: most rows per forward pass.")
    parser.add_argument("--max-batch-tokens", type=int, default=32768, help="In-process: most tokens per pass.")
    parser.add_argument("--startup-timeout", type=float, default=900.0, help="Seconds to wait for vLLM.")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bis_prm_bench_vllm")
    parser.add_argument("--output-json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()

    gpu = torch.cuda.is_available()
    if not gpu and not args.text:
        sys.exit(
            "bench_vllm needs a GPU for a multimodal PRM: vLLM's CPU build serves text models only. Run it where a "
            "GPU and vLLM are (`pip install vllm`), or `--text` for a text PRM on this machine."
        )
    if importlib.util.find_spec("vllm") is None and args.vllm_python == sys.executable:
        sys.exit("vLLM is not installed here: `pip install vllm`, or name a Python that has it with --vllm-python.")
    if not _has_vllm(args.vllm_python):
        sys.exit(f"{args.vllm_python} cannot import vllm.")
    device = "cuda" if gpu else "cpu"
    args.workdir.mkdir(parents=True, exist_ok=True)
    prm = build_prm(args, device)
    rows = rows_for(args)

    model, processor = load_prm(prm, dtype="auto", device_map={"": device})
    scorer = StepScorer(model.eval(), processor, args.batch_size, args.max_batch_tokens)
    local, local_seconds = timed(scorer.score_rows, rows)
    dtype = str(model.dtype).removeprefix("torch.")
    del model, scorer
    if gpu:
        torch.cuda.empty_cache()  # the GPU is vLLM's now

    extra = [*CPU_ARGS] if not gpu else ["--dtype", dtype, "--gpu-memory-utilization", "0.5"]
    if not args.text:
        extra += ["--limit-mm-per-prompt", json.dumps({"image": 2})]
    command = vllm_serve_command(
        prm, python=args.vllm_python, host="127.0.0.1", port=_free_port(), extra_args=[*extra, *args.vllm_args.split()]
    )
    print("serving:", shlex.join(command), flush=True)
    start = time.perf_counter()
    server = start_server(command, args.workdir / "vllm.log", args.startup_timeout)
    startup_seconds = time.perf_counter() - start
    try:
        url = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
        with VLLMScorer(url, str(prm)) as remote_scorer:
            remote_scorer.score_rows(rows[:4])  # warm-up
            remote, remote_seconds = timed(remote_scorer.score_rows, rows)
    finally:
        stop_server(server)

    both = [(a, b) for a, b in zip(local, remote, strict=True) if isinstance(a, list) and isinstance(b, list)]
    differences = [abs(x - y) for a, b in both for x, y in zip(a, b, strict=True)]
    failures = {
        side: sorted(
            {f"{result.reason}: {result.detail[:120]}" for result in results if isinstance(result, ExampleError)}
        )
        for side, results in (("in-process", local), ("vllm", remote))
    }
    figures = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "prm": str(prm),
        "dtype": dtype,
        "rows": len(rows),
        "steps compared": len(differences),
        "rows scored by both": len(both),
        "failures": failures,
        "max |vllm - score_steps|": max(differences) if differences else None,
        "mean |vllm - score_steps|": sum(differences) / len(differences) if differences else None,
        "vllm startup seconds": round(startup_seconds, 1),
        "rows/s in-process (StepScorer)": round(len(rows) / local_seconds, 2),
        "rows/s vllm (VLLMScorer)": round(len(rows) / remote_seconds, 2),
    }
    print(json.dumps(figures, indent=2))
    if args.output_json:
        args.output_json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
