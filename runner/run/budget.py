"""The spending cap: never submit work that could exceed ``budget.max_images`` or
``budget.max_cost``.

Images count in three ways: *paid* (the API reported a task successful: its images are
billed, in any run, whether or not they reached the disk), *uncertain* (a submission
whose outcome could not be known may have been billed, up to its ``max_images``) and
*reserved* (a job was admitted and its task could still produce up to ``max_images``).
A job is admitted only if paid + uncertain + reserved + its ``max_images`` fits; while
tasks in flight hold reservations, admission waits for them, since a task that makes
fewer images than it might (``sequential_image_generation: auto``) frees room.

Owns: the count and admission. Must not know: the API, the ledger's format (it is
given the records and totals once, then told what happens).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable

from runner.manifest.settings import Budget
from runner.state.record import JobRecord, Phase

__all__ = ["ImageBudget"]


class ImageBudget:
    def __init__(
        self,
        budget: Budget,
        records: Iterable[JobRecord] = (),
        *,
        paid: int = 0,
        uncertain: int = 0,
    ) -> None:
        self.budget = budget
        self.spent = paid  # images billed, campaign life
        self.uncertain = uncertain  # images uncertain submissions may have cost
        self.reserved = 0
        self.exhausted = False
        self._changed = asyncio.Event()
        for rec in records:
            if rec.phase is Phase.LIVE:
                self.reserved += rec.max_images  # resumed tasks: released when they end

    def left(self) -> float:
        """Images that may still be committed (infinite without a cap)."""
        b = self.budget
        used = self.spent + self.uncertain + self.reserved
        left = float("inf")
        if b.max_images is not None:
            left = b.max_images - used
        if b.max_cost is not None:
            # Whole images; the epsilon keeps 0.12 / 0.04 (2.9999999999999996) at 3.
            affordable = math.floor(b.max_cost / b.price_per_image + 1e-9)
            left = min(left, affordable - used)
        return left

    async def admit(self, images: int, stopping: asyncio.Event) -> bool:
        """Reserve ``images`` for one job, waiting while work in flight may free room.
        False once nothing in flight can: the budget is exhausted (or the run stops)."""
        while self.left() < images:
            if stopping.is_set():
                return False
            if not self.reserved:
                self.exhausted = True
                return False
            self._changed.clear()
            await self._changed.wait()
        self.reserved += images
        return True

    def release(self, images: int) -> None:
        """A job admitted (or resumed) with ``images`` reserved has ended its task."""
        self.reserved -= images
        self._changed.set()

    def produced(self, images: int) -> None:
        """A task succeeded with this many images."""
        self.spent += images
        self._changed.set()

    def maybe_paid(self, images: int) -> bool:
        """A submission's outcome is unknown: it may have been billed for ``images``.
        True if sending the job again still fits (its reservation is still held)."""
        self.uncertain += images
        return self.left() >= 0

    def wake(self) -> None:
        """Let a waiting admission re-check (the run is stopping)."""
        self._changed.set()
