"""Python-heavy background work in a process of its own, off the service's GIL.

Rebuilding the recommendation index (0.33 s of `json.loads` and loops at 44,000 products, every few
seconds while products are being tagged) and fitting the calibration are mostly Python: on a thread they
hold the GIL that the event loop and the store thread need. Sampled with py-spy under the mixed load (16
users, 2 cores), the two held it in about a third of the samples, and feedback replies waited behind
them (p99 about 90 ms; in their own process: about 40 ms, docs/results.md, the mixed load).
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool


class BackgroundProcess:
    """One worker process for functions of picklable arguments. Spawned, not forked (the service has
    threads and SQLite connections that a fork would copy); started with the first task, so a service
    that never needs it never pays its start (about a second of imports); started again when it died."""

    def __init__(self):
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, fn, *args) -> Future:
        """Run `fn(*args)` in the process; a task it was running when it died fails with BrokenProcessPool."""
        if self._pool is not None:
            try:
                return self._pool.submit(fn, *args)
            except BrokenProcessPool:  # its process died: a new one
                self._pool.shutdown(wait=False)
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
