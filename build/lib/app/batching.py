"""Dynamic batching for /classify: concurrent requests are collected for a short wait and run as one
forward pass per (model, K) on a single inference thread.

Each request keeps its own seeded noise (genrobust.evaluation.logits_for_requests), so its answer does not
depend on what it was batched with. While one batch runs, the next accumulates, so under load batches
grow by themselves and the wait only matters when traffic is light.

Backpressure: the images admitted (waiting or in the running pass) are bounded, by count
(GENROBUST_CLASSIFY_QUEUE_IMAGES) and by the wait they imply (GENROBUST_CLASSIFY_MAX_WAIT_MS, estimated from
recent passes). Images are counted at K = 10: an image asked for at K = 100 is ten times the work, and
counts as ten. A request over either bound raises ``Overloaded`` at once (503 + Retry-After): under overload
the service answers what it can serve within the bound and refuses the rest, instead of letting every
request's latency grow without limit. Retry-After estimates when the refused client's turn is likely to come
(``Batcher.refuse``), so that waiting clients do not all come back every second.

Passes are also bounded in time (a quarter of the wait bound, once the pass time is known): a pass that took
everything admitted would leave nothing queued, and the inference thread would idle while the event loop
answered that pass and admitted the next requests. With shorter passes the next one is always waiting. On a
CPU, batching buys little (BENCHMARKS.md, Load); on a GPU the time bound lies far above
GENROBUST_BATCH_MAX_IMAGES, which then bounds the pass.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby

import torch

log = logging.getLogger(__name__)
PASS_SHARE = 0.25  # a pass takes at most this share of the wait bound
WINDOW_S = 2.0  # recent answers and refusals: the window the rates are taken over
MAX_RETRY_AFTER_S = 10


class Overloaded(Exception):
    """The service cannot take this work now; the message names the setting that bounds it (503, with
    ``retry_after`` seconds in the Retry-After header)."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Item:
    model: str
    samples: int
    seed: int
    images: torch.Tensor
    future: asyncio.Future = field(repr=False)

    @property
    def units(self) -> float:  # images at K = 10
        return len(self.images) * self.samples / 10


@dataclass
class BatchInfo:
    images: int  # images in the forward pass this request shared
    seconds: float  # time of that pass


class Batcher:
    def __init__(self, run, wait_s: float, max_images: int, queue_images: int = 10**9, max_wait_s: float = 0.0,
                 timeout_s: float = 3600.0):
        """``run(model, samples, [(images, seed), ...]) -> [logits, ...]`` computes one group."""
        self.run, self.wait_s, self.max_images = run, wait_s, max_images
        self.queue_images, self.max_wait_s, self.timeout_s = queue_images, max_wait_s, timeout_s
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="genrobust-infer")
        self.queue: asyncio.Queue[_Item] | None = None
        self.task: asyncio.Task | None = None
        self.pending = 0.0  # images (at K = 10) admitted and not answered yet (changed on the event loop only)
        self.seconds_per_image: float | None = None  # at K = 10; moving average over recent passes
        # Requests between arrival and response (body reading, JSON parsing, the pass, serialising): under
        # overload the time goes there as much as into the pass, so the wait is also bounded by Little's law
        # from their count and the rate at which responses recently left.
        self.in_flight = 0
        self._answered: collections.deque[float] = collections.deque()  # times of recent responses, oldest first
        self._refused: collections.deque[tuple[float, int]] = collections.deque()  # (time, Retry-After told)
        self._told = 0  # sum of the Retry-After seconds in _refused

    def expected_wait(self, images: float = 0) -> float:
        """Seconds until ``images`` more would be served, if admitted now (0 before the first pass)."""
        return (self.pending + images) * (self.seconds_per_image or 0.0)

    def answer_rate(self, window: float = WINDOW_S) -> float | None:
        """Responses per second over the last ``window`` seconds (None: too few to tell)."""
        now = time.monotonic()
        while self._answered and now - self._answered[0] > window:
            self._answered.popleft()
        return len(self._answered) / window if len(self._answered) >= 8 else None

    def refuse(self, message: str) -> Overloaded:
        """The Overloaded to raise, its Retry-After set to when a turn is likely: the clients now waiting out a
        refusal (Little's law: the Retry-After seconds told over the last window, per second of it) over the
        rate requests are answered. A fixed 1 s would bring every waiting client back each second, hundreds
        of refusals a second under heavy overload, each taking event-loop time from inference. 1 s without
        enough answers to tell; at most MAX_RETRY_AFTER_S."""
        now = time.monotonic()
        while self._refused and now - self._refused[0][0] > WINDOW_S:
            self._told -= self._refused.popleft()[1]
        rate = self.answer_rate()
        after = min(MAX_RETRY_AFTER_S, max(1, round(self._told / WINDOW_S / rate))) if rate else 1
        self._refused.append((now, after))
        self._told += after
        return Overloaded(message, retry_after=after)

    def pass_units(self) -> float:
        """Most images (at K = 10) in one pass by time: PASS_SHARE of the wait bound (unbounded until the
        first pass is timed, or without a wait bound)."""
        if not self.max_wait_s or not self.seconds_per_image:
            return float("inf")
        return max(1.0, PASS_SHARE * self.max_wait_s / self.seconds_per_image)

    def admit(self) -> None:
        """Called when a /classify request arrives, before its body is read: Overloaded when the requests
        already in flight would make it wait longer than max_wait_s, or the image queue is full."""
        self.check(1)
        rate = self.answer_rate()
        if self.max_wait_s > 0 and rate and self.in_flight >= 2 and (self.in_flight + 1) / rate > self.max_wait_s:
            raise self.refuse(f"overloaded: {self.in_flight} /classify requests in progress at {rate:.0f}/s would "
                             f"wait about {(self.in_flight + 1) / rate * 1000:.0f} ms, over "
                             f"{self.max_wait_s * 1000:.0f} ms (GENROBUST_CLASSIFY_MAX_WAIT_MS); retry later")
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._answered.append(time.monotonic())

    def check(self, images: float) -> None:
        """Raise Overloaded when ``images`` more cannot be admitted. A request alone is always admitted, so
        one as large as GENROBUST_MAX_IMAGES is served even when that exceeds the queue bound."""
        if not self.pending:
            return
        if self.pending + images > self.queue_images:
            raise self.refuse(f"overloaded: {self.pending:.0f} images (at K = 10) already queued for /classify, at most "
                             f"{self.queue_images} (GENROBUST_CLASSIFY_QUEUE_IMAGES); retry later")
        if self.max_wait_s > 0 and (wait := self.expected_wait(images)) > self.max_wait_s:
            raise self.refuse(f"overloaded: /classify would wait about {wait * 1000:.0f} ms, over "
                             f"{self.max_wait_s * 1000:.0f} ms (GENROBUST_CLASSIFY_MAX_WAIT_MS); retry later")

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._collect())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def logits(self, model: str, samples: int, seed: int, images: torch.Tensor
                     ) -> tuple[torch.Tensor, BatchInfo]:
        item = _Item(model, samples, seed, images, self.loop.create_future())
        self.check(item.units)
        future, units = item.future, item.units
        self.pending += units
        try:
            self.queue.put_nowait(item)
            # bounded even if the inference thread stalls; shield: a batch in progress still resolves it
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            future.cancel()  # its pass skips it if it has not started
            raise self.refuse(f"/classify did not finish within {self.timeout_s:g} s "
                             "(GENROBUST_CLASSIFY_TIMEOUT_S); retry later") from None
        finally:
            self.pending -= units

    async def _collect(self) -> None:
        held = None  # the request that would have overrun the last pass: it opens the next one
        while True:
            items = [held or await self.queue.get()]
            held, deadline = None, self.loop.time() + self.wait_s
            n, units, max_units = len(items[0].images), items[0].units, self.pass_units()
            while n < self.max_images and units < max_units:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - self.loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                if n + len(item.images) > self.max_images or units + item.units > max_units:
                    held = item
                    break
                items.append(item)
                n, units = n + len(item.images), units + item.units
            # the next batch accumulates in the queue while this one runs
            try:
                await self.loop.run_in_executor(self.executor, self._run_batch, items)
            except Exception as exc:  # never let the collector die: fail this batch, keep serving
                log.exception("batch failed")
                for it in items:
                    _resolve(it.future, None, exc)

    def _run_batch(self, items: list[_Item]) -> None:
        key = lambda it: (it.model, it.samples)  # noqa: E731
        for (model, samples), group in groupby(sorted(items, key=key), key=key):
            group = [it for it in group if not it.future.done()]  # skip requests whose client went away
            if not group:
                continue
            t0 = time.perf_counter()
            try:
                outs = self.run(model, samples, [(it.images, it.seed) for it in group])
            except Exception as exc:  # delivered to each waiting request, which turns it into a response
                for it in group:
                    self.loop.call_soon_threadsafe(_resolve, it.future, None, exc)
                continue
            info = BatchInfo(sum(len(it.images) for it in group), time.perf_counter() - t0)
            spi = info.seconds / (info.images * samples / 10)
            self.seconds_per_image = spi if self.seconds_per_image is None else 0.8 * self.seconds_per_image + 0.2 * spi
            for it, out in zip(group, outs, strict=True):
                self.loop.call_soon_threadsafe(_resolve, it.future, (out, info), None)


def _resolve(future: asyncio.Future, value, exc) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)
