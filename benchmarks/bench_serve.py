"""Benchmark `bis-prm serve` under concurrent clients: batched serving against one-request-at-a-time serving.

Two `bis-prm serve` processes on 127.0.0.1 serve the same tiny random text PRM, one after the other: the batched
server (`--max-batch-size 32`) and the baseline (`--max-batch-size 1`: every row is its own model call, what a
server without batching does). N clients (asyncio and aiohttp, as OpenRLHF's) each send OpenRLHF-shaped
`/get_reward` requests of one query, as OpenRLHF does, one after the other, until the request count or the time
limit is reached. The script prints throughput, p50/p99 latency per server and the throughput ratio, and fails if
any request was lost, refused or answered with a row error. Goal: >= 4x at 32 concurrent clients.

    python -m benchmarks.bench_serve                                  # 32 clients, 1024 requests per server
    python -m benchmarks.bench_serve --clients 8 --requests 200       # quick check
    python -m benchmarks.bench_serve --long-steps --max-steps 8       # ~200-token rows: the model's compute dominates
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_prm(path: Path) -> Path:
    from bis_prm.model.modeling_prm import load_prm
    from bis_prm.testing import make_tiny_lm

    model, processor = load_prm(make_tiny_lm("qwen2", path / "base"), head="linear")
    model.save_pretrained(path / "prm")
    processor.save_pretrained(path / "prm")
    return path / "prm"


def payloads(count: int, max_steps: int, long_steps: bool, seed: int = 0) -> list[dict]:
    """OpenRLHF's request for one query: a prompt and a response of 1 to `max_steps` arithmetic steps, each a short
    equation as in the text sample (~40 tokens a row for the tiny model's tokenizer) or, with `long_steps`, a
    sentence (~200 tokens a row)."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        prompt = f"What is {a} + {b}?\n"
        steps = []
        for i in range(rng.randint(1, max_steps)):
            partial = a + b * i
            steps.append(
                f"Step {i}: {a} + {b} is {a} plus {b}, so after {i} additions the partial sum is {partial}."
                if long_steps
                else f"{a} + {b} * {i} = {partial}."
            )
        requests.append({"query": [prompt + "\n\n".join(steps)], "prompts": [prompt], "labels": [str(a + b)]})
    return requests


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(prm: Path, max_batch_size: int, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "bis_prm", "serve", "--model", str(prm), "--port", str(port)]
    command += ["--max-batch-size", str(max_batch_size), "--device", "cpu", "--log-level", "warning"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the model on one thread: the machine is shared
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env)
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"bis-prm serve exited with {process.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).raise_for_status()
            return process
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("bis-prm serve did not start in 300 s") from None
            time.sleep(0.2)


async def load(url: str, requests: list[dict], clients: int, time_limit: float) -> dict:
    """`clients` concurrent clients sending `requests` in order; stops taking new ones after `time_limit` s. The
    client is aiohttp, as OpenRLHF's (`openrlhf/utils/agent.py`)."""
    import aiohttp

    queue = list(reversed(requests))
    latencies, failures = [], []
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:

        async def one_client():
            while queue and time.perf_counter() - started < time_limit:
                body = queue.pop()
                sent = time.perf_counter()
                try:
                    async with session.post(url + "/get_reward", json=body) as response:
                        answer = await response.json()
                        if response.status != 200 or answer["errors"] != [None]:
                            failures.append(f"{response.status}: {answer}")
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                    failures.append(repr(error))
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(one_client() for _ in range(clients)))
    wall = time.perf_counter() - started
    stats = httpx.get(url + "/health", timeout=10).json()["stats"]
    latencies.sort()
    return {
        "requests": len(latencies),
        "failures": failures,
        "wall": wall,
        "throughput": len(latencies) / wall,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "rows_per_call": stats["rows_per_call"],
    }


def measure(prm: Path, max_batch_size: int, requests: list[dict], clients: int, time_limit: float) -> dict:
    port = free_port()
    process = start_server(prm, max_batch_size, port)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(load(url, requests[: 2 * clients], clients, time_limit))  # warm-up
        return asyncio.run(load(url, requests, clients, time_limit))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1024, help="requests per server")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per server, at most")
    parser.add_argument("--max-steps", type=int, default=3, help="most steps per response")
    parser.add_argument("--long-steps", action="store_true", help="sentences instead of equations (~5x the tokens)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        prm = build_prm(Path(tmp))
        requests = payloads(args.requests, args.max_steps, args.long_steps)
        results = {}
        for name, size in [("batched (--max-batch-size 32)", 32), ("one at a time (--max-batch-size 1)", 1)]:
            results[name] = measure(prm, size, requests, args.clients, args.time_limit)

    shape = f"1-{args.max_steps} {'sentence' if args.long_steps else 'equation'} steps per response"
    print(f"\n{args.clients} concurrent clients, one query per request ({shape}), loopback")
    print(f"{'server':<36} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'rows/call':>9} {'failed':>6}")
    for name, r in results.items():
        print(
            f"{name:<36} {r['requests']:>8} {r['throughput']:>8.1f} {r['p50'] * 1e3:>8.1f} {r['p99'] * 1e3:>8.1f} "
            f"{r['rows_per_call']:>9.1f} {len(r['failures']):>6}"
        )
    batched, single = results.values()
    print(f"throughput ratio batched / one at a time: {batched['throughput'] / single['throughput']:.2f}x")
    failures = [failure for r in results.values() for failure in r["failures"]]
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[:3]}")
    if any(r["requests"] < len(requests) for r in results.values()):
        print(
            "note: the time limit stopped a run before every request was sent (none was lost: all sent were answered)"
        )


if __name__ == "__main__":
    main()
