"""Requests batched inside the server: concurrent `/tag` calls share one forward pass.

The first queued product waits up to `max_wait_s` for others (up to `max_batch`); the batch runs on the
model thread while the next one gathers. Products are grouped by image root inside a batch.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..data.schema import Product

RunBatch = Callable[[list[tuple[Path, list[Product]]]], Awaitable[list[list[dict]]]]


class TagBatcher:
    def __init__(self, run: RunBatch, max_batch: int, max_wait_s: float):
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.batches = self.products = 0

    def _ensure_running(self) -> None:
        """Start the batching task on the running event loop (again, if the app moved to another loop)."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop or self.task is None or self.task.done():
            self.loop, self.queue = loop, asyncio.Queue()
            self.task = loop.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None and self.loop is asyncio.get_running_loop():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def tag(self, product: Product, root: Path) -> dict:
        """The output row of one product, computed in a batch with whatever else is waiting."""
        self._ensure_running()
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((product, root, done))
        return await done

    async def _gather(self) -> list[tuple]:
        jobs = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(jobs) < self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            try:
                jobs.append(self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left))
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
        return jobs

    async def _loop(self) -> None:
        while True:
            jobs = await self._gather()
            groups: dict[Path, list[int]] = {}
            for i, (_, root, _) in enumerate(jobs):
                groups.setdefault(root, []).append(i)
            try:
                results = await self.run([(root, [jobs[i][0] for i in idx]) for root, idx in groups.items()])
                for idx, rows in zip(groups.values(), results):
                    for i, row in zip(idx, rows):
                        if not jobs[i][2].done():
                            jobs[i][2].set_result(row)
            except Exception as e:  # the batch failed: every request in it hears why
                for _, _, fut in jobs:
                    if not fut.done():
                        fut.set_exception(e)
            self.batches, self.products = self.batches + 1, self.products + len(jobs)
