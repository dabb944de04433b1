"""Images billed: those of every task that has reached ``success``, counted lazily.

Contract: the API bills per image actually generated, so a task bills its ``n_images``
the moment its state becomes ``success`` (failed and stuck tasks bill nothing). States
follow the clock, not timers, so :meth:`Billing.billed` pops the tasks whose completion
time has passed from a heap: O(log n) per task over its life, no task scanned twice.
"""

from __future__ import annotations

import heapq

from runner.sim.tasks import Task


class Billing:
    """A heap of (completion time, images) of successful-to-be tasks, and the total due."""

    def __init__(self) -> None:
        self._due: list[tuple[int, int]] = []
        self._billed = 0

    def add(self, task: Task) -> None:
        """Book ``task``: its images bill once it succeeds (never, if it fails or hangs)."""
        if task.makes_images:
            heapq.heappush(self._due, (task.complete_ms, task.n_images))

    def billed(self, now_ms: float) -> int:
        """Images of the booked tasks in ``success`` at ``now_ms`` (Unix milliseconds)."""
        while self._due and self._due[0][0] <= now_ms:
            self._billed += heapq.heappop(self._due)[1]
        return self._billed
