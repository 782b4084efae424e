"""Dynamic batching for /classify: concurrent requests are collected for a short wait and run as one
forward pass per (model, K) on a single inference thread.

Each request keeps its own seeded noise (genrobust.evaluation.logits_for_requests), so its answer does not
depend on what it was batched with. While one batch runs, the next accumulates, so under load batches
grow by themselves and the wait only matters when traffic is light.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby

import torch

log = logging.getLogger(__name__)


@dataclass
class _Item:
    model: str
    samples: int
    seed: int
    images: torch.Tensor
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchInfo:
    images: int  # images in the forward pass this request shared
    seconds: float  # time of that pass


class Batcher:
    def __init__(self, run, wait_s: float, max_images: int):
        """``run(model, samples, [(images, seed), ...]) -> [logits, ...]`` computes one group."""
        self.run, self.wait_s, self.max_images = run, wait_s, max_images
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="genrobust-infer")
        self.queue: asyncio.Queue[_Item] | None = None
        self.task: asyncio.Task | None = None

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
        future = self.loop.create_future()
        await self.queue.put(_Item(model, samples, seed, images, future))
        return await future

    async def _collect(self) -> None:
        while True:
            items = [await self.queue.get()]
            n, deadline = len(items[0].images), self.loop.time() + self.wait_s
            while n < self.max_images:
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
                items.append(item)
                n += len(item.images)
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
            for it, out in zip(group, outs, strict=True):
                self.loop.call_soon_threadsafe(_resolve, it.future, (out, info), None)


def _resolve(future: asyncio.Future, value, exc) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)
