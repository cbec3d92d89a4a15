"""The batching engine of `bis-prm serve`: rows of concurrent requests merged into one backend call.

Every request's rows join one FIFO queue. Each backend has a thread of its own that, whenever it is free, takes the
rows waiting at the head of the queue, up to `max_batch_size`, and scores them with one `score_rows` call. While a
backend computes, new requests queue up, so the next call is larger: throughput grows with concurrency without any
waiting timer. The thread takes its next rows as soon as a call ends, not when the event loop gets round to it: under
load the loop has many requests to answer, and a backend that waited for it would idle. With several backends (vLLM
replicas) a free thread takes the next rows, so the load goes to whichever replica is free first.

The token budget is the backend's: a [`~bis_prm.model.inference.StepScorer`] splits a call into forward passes of
at most `max_batch_tokens` (padding included, exact token counts), and vLLM schedules its own batches
(`--max-num-batched-tokens`). Counting tokens here as well would tokenize every row once more for nothing.

A backend is anything with `score_rows(rows) -> list[list[float] | ExampleError]`: a
[`~bis_prm.model.inference.StepScorer`] (the model in-process), a `VLLMScorer` (a vLLM server) or a
[`~bis_prm.serving.client.RemoteScorer`].
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bis_prm.model.processing_prm import ExampleError

__all__ = ["BatchingEngine", "EngineStats", "ScoringBackend"]

logger = logging.getLogger(__name__)

RowResult = list[float] | ExampleError


class ScoringBackend(Protocol):
    def score_rows(self, rows: Sequence[dict[str, Any]]) -> list[RowResult]: ...


@dataclass
class EngineStats:
    """Counters of an engine: requests and rows accepted and finished, backend calls, and the largest call."""

    requests_accepted: int = 0
    requests_finished: int = 0
    rows_accepted: int = 0
    rows_scored: int = 0
    rows_failed: int = 0
    backend_calls: int = 0
    largest_call: int = 0
    calls_per_backend: list[int] = field(default_factory=list)

    @property
    def rows_per_call(self) -> float:
        return (self.rows_scored + self.rows_failed) / self.backend_calls if self.backend_calls else 0.0

    def as_dict(self) -> dict[str, int | float]:
        numbers = {key: value for key, value in vars(self).items() if isinstance(value, int)}
        return {**numbers, "rows_per_call": self.rows_per_call}


@dataclass
class _Pending:
    row: dict[str, Any]
    results: list[RowResult | None]
    position: int
    done: asyncio.Future


class BatchingEngine:
    """
    Score rows of many concurrent requests in merged backend calls (see the module docstring).

    Args:
        backends (`Sequence[ScoringBackend]`):
            One or more objects with `score_rows`; each gets a thread.
        max_batch_size (`int`, *optional*, defaults to `16`):
            Most rows per backend call; `1` scores one row at a time (no batching).

    Example:

    ```python
    >>> scorer = StepScorer(model, processor, max_batch_size=16, max_batch_tokens=16384)  # doctest: +SKIP
    >>> engine = BatchingEngine([scorer], max_batch_size=16)  # doctest: +SKIP
    >>> await engine.start()  # doctest: +SKIP
    >>> await engine.score([{"question": "1+1?", "steps": ["1+1=2."]}])  # doctest: +SKIP
    [[0.93]]

    ```
    """

    def __init__(
        self,
        backends: Sequence[ScoringBackend],
        max_batch_size: int = 16,
    ):
        if not backends:
            raise ValueError("BatchingEngine needs at least one backend.")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}.")
        self.backends, self.max_batch_size = list(backends), max_batch_size
        self.stats = EngineStats(calls_per_backend=[0] * len(self.backends))
        # the queue is shared with the backend threads; everything else belongs to the event loop
        self._queue: collections.deque[_Pending] = collections.deque()
        self._ready = threading.Condition()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unfinished = 0
        self._idle: asyncio.Event | None = None

    async def start(self) -> None:
        """Start one thread per backend, answering on the running event loop."""
        self._loop, self._idle = asyncio.get_running_loop(), asyncio.Event()
        self._idle.set()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._serve, args=(index,), name=f"bis-prm-backend-{index}", daemon=True)
            for index in range(len(self.backends))
        ]
        for thread in self._threads:
            thread.start()

    async def score(self, rows: Sequence[dict[str, Any]]) -> list[RowResult]:
        """Score `rows` (merged with other requests' rows); per row, in order, its step scores or its error."""
        if self._loop is None:
            raise RuntimeError("BatchingEngine.start() was not called.")
        self.stats.requests_accepted += 1
        self.stats.rows_accepted += len(rows)
        if not rows:
            self.stats.requests_finished += 1
            return []
        results: list[RowResult | None] = [None] * len(rows)
        futures = [self._loop.create_future() for _ in rows]
        self._unfinished += len(rows)
        self._idle.clear()
        with self._ready:
            self._queue.extend(
                _Pending(row, results, position, future)
                for position, (row, future) in enumerate(zip(rows, futures, strict=True))
            )
            self._ready.notify()
        try:
            for future in futures:  # each is set once its row is scored; cheaper than gathering them
                await future
        finally:
            self.stats.requests_finished += 1
        return results  # type: ignore[return-value]

    def _serve(self, index: int) -> None:
        """A backend's thread: take the rows at the head of the queue, score them, hand the results to the loop."""
        backend = self.backends[index]
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
                if self._queue:  # more rows than this call takes: another free backend takes them
                    self._ready.notify()
            started = time.perf_counter()
            try:
                outcome = backend.score_rows([item.row for item in batch])
                if len(outcome) != len(batch):
                    raise RuntimeError(f"the backend returned {len(outcome)} results for {len(batch)} rows")
            # one failed call fails its rows, never the server; BaseException too (a library's sys.exit() in a
            # backend): a dead thread would strand every row queued behind this call
            except BaseException as error:
                logger.exception("Backend %d failed on %d rows", index, len(batch))
                outcome = [ExampleError("backend_error", f"the scoring backend failed: {error}")] * len(batch)
            logger.debug("Backend %d scored %d rows in %.3f s", index, len(batch), time.perf_counter() - started)
            self._loop.call_soon_threadsafe(self._deliver, index, batch, outcome)

    def _deliver(self, index: int, batch: list[_Pending], outcome: list[RowResult]) -> None:
        """On the event loop: a backend call's results to their requests."""
        self.stats.backend_calls += 1
        self.stats.calls_per_backend[index] += 1
        self.stats.largest_call = max(self.stats.largest_call, len(batch))
        for item, result in zip(batch, outcome, strict=True):
            failed = isinstance(result, ExampleError)
            self.stats.rows_failed += failed
            self.stats.rows_scored += not failed
            item.results[item.position] = result
            if not item.done.done():  # a request whose client left was cancelled
                item.done.set_result(None)
        self._unfinished -= len(batch)
        if not self._unfinished:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until every accepted row is scored."""
        await self._idle.wait()

    async def close(self) -> None:
        """Finish every accepted row, then stop the backend threads."""
        if self._loop is None:
            return
        await self.drain()
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
