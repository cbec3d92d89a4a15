"""Benchmark `bis-prm serve` under concurrent clients: batched serving against one-request-at-a-time serving.

Two `bis-prm serve` processes on 127.0.0.1 serve the same tiny random text PRM: the batched server
(`--max-batch-size 32`) and the baseline (`--max-batch-size 1`: every row is its own model call, what a server
without batching does). They are loaded in alternation, `--rounds` times each, and the median round of each is shown,
so that a drift of a shared machine's speed hits both alike. N clients (asyncio and aiohttp, as OpenRLHF's) each
send OpenRLHF-shaped `/get_reward` requests of one query, as OpenRLHF does, one after the other, until the request
count or the time limit is reached. The script prints throughput, p50/p99 latency per server and the throughput
ratio, and fails if any request was lost, refused or answered with a row error. Goal: >= 4x at 32 concurrent clients.

It also prints the ceiling of that ratio, measured in the same run once the servers have stopped: the model's own
gain from batching, in this process on one thread as the servers run it, `n * t(1 row) / t(n rows)` for the same rows
with `StepScorer.score_rows`, at `n` = the rows per call the batched server reached and at `n` = the clients. No
server batches better than its model; the HTTP work of server and clients, which batching does not share, costs the
rest.

    python -m benchmarks.bench_serve                                  # 32 clients, 3 rounds of 4096 requests
    python -m benchmarks.bench_serve --clients 8 --requests 200 --rounds 1   # quick check
    python -m benchmarks.bench_serve --long-steps --max-steps 8       # ~200-token rows: the model's compute dominates
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
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


def rows_of(requests: list[dict]) -> list[dict]:
    """The rows the servers score for these requests (their default `RewardConfig`)."""
    from bis_prm.serving.serving_reward import RewardConfig

    config = RewardConfig()
    return [config.row(r["query"][0], r["prompts"][0]) for r in requests]


def model_ceiling(
    prm: Path, rows: list[dict], sizes: list[int], rounds: int, seconds: float = 1.0
) -> dict[int, float]:
    """`n * t(1 row) / t(n rows)` per size `n`: the model's own gain from batching, on one thread as the servers run
    it; t(1 row) is the mean over the first `n` rows, each scored alone. The two are timed in alternation, `rounds`
    times, and the median ratio is returned (a machine shared with other work drifts between two timings)."""
    import torch

    from bis_prm.model.inference import StepScorer
    from bis_prm.model.modeling_prm import load_prm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, processor = load_prm(str(prm), device_map={"": "cpu"})
        scorer = StepScorer(model.eval(), processor, max_batch_size=max(sizes), max_batch_tokens=16384)

        def per_call(calls: list[list[dict]]) -> float:
            started, count = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                for call in calls:
                    scorer.score_rows(call)
                count += len(calls)
            return (time.perf_counter() - started) / count

        ceilings = {}
        for n in sizes:
            alone, together = [[row] for row in rows[:n]], [rows[:n]]
            per_call(alone + together)  # warm-up
            ceilings[n] = statistics.median(n * per_call(alone) / per_call(together) for _ in range(rounds))
        return ceilings
    finally:
        torch.set_num_threads(threads)


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


SERVERS = {"batched (--max-batch-size 32)": 32, "one at a time (--max-batch-size 1)": 1}


def measure(prm: Path, requests: list[dict], clients: int, time_limit: float, rounds: int) -> dict[str, list[dict]]:
    """Both servers up at once, loaded in alternation (batched, one at a time, batched, ...) `rounds` times each, so
    that a drift of the machine's speed hits both alike; per server, the result of every round."""
    processes, urls = [], {}
    try:
        for name, max_batch_size in SERVERS.items():
            port = free_port()
            processes.append(start_server(prm, max_batch_size, port))
            urls[name] = f"http://127.0.0.1:{port}"
        for url in urls.values():
            asyncio.run(load(url, requests[: 2 * clients], clients, time_limit))  # warm-up
        results = {name: [] for name in urls}
        for _ in range(rounds):
            for name, url in urls.items():
                results[name].append(asyncio.run(load(url, requests, clients, time_limit)))
        return results
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=120)


def median_round(results: list[dict]) -> dict:
    return sorted(results, key=lambda r: r["throughput"])[len(results) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4096, help="requests per server")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per round and server, at most")
    parser.add_argument("--max-steps", type=int, default=3, help="most steps per response")
    parser.add_argument("--long-steps", action="store_true", help="sentences instead of equations (~5x the tokens)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server (the median is shown)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        prm = build_prm(Path(tmp))
        requests = payloads(args.requests, args.max_steps, args.long_steps)
        rounds = measure(prm, requests, args.clients, args.time_limit, args.rounds)
        results = {name: median_round(server_rounds) for name, server_rounds in rounds.items()}
        reached = max(1, round(next(iter(results.values()))["rows_per_call"]))
        ceilings = model_ceiling(prm, rows_of(requests), sorted({reached, args.clients}), args.rounds)

    shape = f"1-{args.max_steps} {'sentence' if args.long_steps else 'equation'} steps per response"
    print(f"\n{args.clients} concurrent clients, one query per request ({shape}), loopback")
    print(f"each server: the median of {args.rounds} rounds, the two servers loaded in alternation")
    print(f"{'server':<36} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'rows/call':>9} {'failed':>6}")
    for name, r in results.items():
        print(
            f"{name:<36} {r['requests']:>8} {r['throughput']:>8.1f} {r['p50'] * 1e3:>8.1f} {r['p99'] * 1e3:>8.1f} "
            f"{r['rows_per_call']:>9.1f} {len(r['failures']):>6}"
        )
    batched, single = results.values()
    paired = [b["throughput"] / s["throughput"] for b, s in zip(*rounds.values(), strict=True)]
    print(
        f"throughput ratio batched / one at a time: {batched['throughput'] / single['throughput']:.2f}x "
        f"(round by round: {', '.join(f'{ratio:.2f}x' for ratio in paired)})"
    )
    for n, ceiling in ceilings.items():
        print(f"ceiling, the model alone (in-process, one thread): {n} rows a call = {ceiling:.2f}x one at a time")
    every_round = [r for server_rounds in rounds.values() for r in server_rounds]
    failures = [failure for r in every_round for failure in r["failures"]]
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[:3]}")
    if any(r["requests"] < len(requests) for r in every_round):
        print(
            "note: the time limit stopped a run before every request was sent (none was lost: all sent were answered)"
        )


if __name__ == "__main__":
    main()
