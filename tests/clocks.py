"""A fake clock for tests that drive time instead of sleeping through it (the style of
aiolimiter's tests): it stands still until a test advances it or a coroutine sleeps on
it, and then it jumps."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Implements :class:`runner.clock.Clock`. Monotonic and wall readings move together;
    ``sleep(s)`` records ``s``, advances the clock by it at once and lets the event loop
    run one round, so a loop paced by this clock runs as fast as the CPU allows."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._wall += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
