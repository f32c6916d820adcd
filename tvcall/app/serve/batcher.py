"""One queue and one worker in front of the engine: requests from concurrent clients are batched.

The engine runs on a single worker thread (a model on two CPU cores gains nothing from two threads
stepping it at once, and the tokenizer is not safe to share across threads). Each turn the worker takes
every request waiting, up to `max_batch`, and routes them with the engine's `route_batch(texts)` when it
has one, else one at a time (then `max_batch` is 1, so no request waits behind a batch it is not in). A full
queue refuses new requests at once (`QueueFull` carries a Retry-After estimate) rather than piling them up.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tvcall.app.engine.base import Engine, RouteResult
from tvcall.data.prompt import prompt_ids

DEFAULT_MAX_PROMPT_TOKENS = 384  # the fast backend's static cache holds 512; the answer needs the rest


# After the first request of a batch, wait this long for others: clients answered together send their next
# requests a few milliseconds apart, and a batch started at once would take only the first of them (measured with
# 16 clients: 1.88× the one-at-a-time throughput without the wait).
DEFAULT_GATHER_S = 0.015
_GATHER_POLL_S = 0.002


class QueueFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class TextTooLong(ValueError):
    pass


@dataclass
class _Job:
    text: str
    future: asyncio.Future[RouteResult]
    queued_at: float = field(default_factory=time.perf_counter)


BatchObserver = Callable[[int, float], None]  # (batch size, seconds)


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 16, max_queue: int = 64, observe: BatchObserver | None = None,
                 gather_s: float = DEFAULT_GATHER_S) -> None:
        self.engine = engine
        self.gather_s = gather_s
        self._route_batch: Callable[[list[str]], list[RouteResult]] | None = getattr(engine, "route_batch", None)
        self.max_batch = max(1, max_batch) if self._route_batch else 1
        self.max_queue = max_queue
        self.max_prompt_tokens: int = getattr(engine, "max_prompt_tokens", DEFAULT_MAX_PROMPT_TOKENS)
        self._observe = observe or (lambda size, seconds: None)
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batch_s = 0.5  # moving average of a batch's time, for Retry-After

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tvcall-engine")
        self._worker = asyncio.create_task(self._loop(), name="tvcall-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._worker = self._executor = None

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def retry_after_s(self) -> int:
        return max(1, math.ceil((self.depth / self.max_batch + 1) * self._batch_s))

    # --- requests -----------------------------------------------------------------------------------
    async def route(self, text: str, timeout_s: float) -> RouteResult:
        """The engine's answer for `text`; QueueFull, TimeoutError, TextTooLong or the engine's error."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        job = _Job(text, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull(self.retry_after_s()) from None
        return await asyncio.wait_for(job.future, timeout_s)  # a timed-out job is cancelled and skipped

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            deadline = time.perf_counter() + (self.gather_s if self.max_batch > 1 else 0.0)
            while len(jobs) < self.max_batch:
                if not self._queue.empty():
                    jobs.append(self._queue.get_nowait())
                elif time.perf_counter() < deadline:
                    await asyncio.sleep(_GATHER_POLL_S)
                else:
                    break
            jobs = [job for job in jobs if not job.future.done()]
            if not jobs:
                continue
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run, [job.text for job in jobs])
            except Exception as exc:  # the worker must outlive any failure
                outcomes = [exc] * len(jobs)
            seconds = time.perf_counter() - started
            self._batch_s = 0.8 * self._batch_s + 0.2 * seconds
            self._observe(len(jobs), seconds)
            for job, outcome in zip(jobs, outcomes, strict=True):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    # --- on the engine thread -----------------------------------------------------------------------
    def _run(self, texts: list[str]) -> list[RouteResult | Exception]:
        counts = [self._prompt_tokens(text) for text in texts]
        outcomes: list[RouteResult | Exception] = [
            TextTooLong(f"text is {n} prompt tokens; the limit is {self.max_prompt_tokens}") for n in counts
        ]
        todo = [i for i, n in enumerate(counts) if n <= self.max_prompt_tokens]
        for i, result in zip(todo, self._route_all([texts[i] for i in todo]), strict=True):
            if isinstance(result, RouteResult) and counts[i]:
                result.stats["prompt_tokens"] = counts[i]
            outcomes[i] = result
        return outcomes

    def _route_all(self, texts: list[str]) -> list[RouteResult | Exception]:
        if self._route_batch is not None and len(texts) > 1:
            try:
                return list(self._route_batch(texts))
            except Exception:  # one bad text must not fail the batch: retry one by one
                pass
        return [self._route_one(text) for text in texts]

    def _route_one(self, text: str) -> RouteResult | Exception:
        try:
            return self.engine.route(text)
        except Exception as exc:  # handed to the request that asked
            return exc

    def _prompt_tokens(self, text: str) -> int:
        """The prompt's length in tokens (0 for an engine without a tokenizer: no limit to check)."""
        tokenizer: Any = getattr(self.engine, "tokenizer", None)
        return len(prompt_ids(tokenizer, text)) if tokenizer is not None else 0
