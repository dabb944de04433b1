"""Slots: a counting semaphore that can be closed, for the run's backpressure.

The engine takes a slot *before* starting a job's work, so memory follows the
concurrency limit, not the manifest's length: one kind of slot per task alive on the API
(``limits.concurrency``), another per job in the pipeline (tasks and downloads).

Owns: counting and handing over. Must not know: what the slots are for.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Slots"]


class Slots:
    """A counting semaphore that can be closed: waiters then get ``False`` at once.

    The engine takes a slot *before* starting a job's work (backpressure), and must be
    able to stop waiting for one the moment a stop is requested. A released slot is handed
    straight to the oldest waiter (FIFO), so no waiter starves."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self.closed = False
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._idle: asyncio.Event | None = None

    async def wait_idle(self) -> None:
        """Wait until no slot is in use."""
        while self.used:
            self._idle = asyncio.Event()
            await self._idle.wait()

    async def acquire(self) -> bool:
        if self.closed:
            return False
        if self.used < self.size and not self._waiters:
            self.used += 1
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.release()  # the slot was handed over as we were cancelled
            raise

    def take(self) -> None:
        """Take a slot without waiting (for work already alive on the API at start-up)."""
        self.used += 1

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(True)  # hand the slot over: ``used`` is unchanged
                return
        self.used -= 1
        if not self.used and self._idle is not None:
            self._idle.set()

    def close(self) -> None:
        self.closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(False)
