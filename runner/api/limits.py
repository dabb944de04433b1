"""Request-rate limiting: the one gate every API request of a run passes.

Two layers, both awaited by :meth:`RequestGate.acquire` before a request is sent:

* a hard cap, an :class:`aiolimiter.AsyncLimiter`, sized so that **no window** of
  ``period_s`` seconds ever holds more than ``rate`` requests. A leaky bucket of capacity
  ``rate`` would allow a full burst *plus* a period's drain in one window (up to twice the
  rate), which a provider counting a sliding window answers with 429s. So the bucket is
  small (``burst``) and drains at ``(rate - burst) / period_s``: any window then holds at
  most ``burst + (rate - burst) = rate`` requests.
* a soft pacer that backs off on 429 (multiplicative decrease, honouring ``Retry-After``
  with a global pause) and recovers additively on success, so a provider that is stricter
  than configured is slowed down to, not hammered.

Owns: when the next request may leave. Must not know: what the requests are for (beyond
"a submission goes first"), the ledger, the manifest. The pacer's time is the clock it
is given; the hard cap keeps the event loop's time (aiolimiter's).
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter

from runner.clock import SYSTEM_CLOCK, Clock

__all__ = ["RequestGate", "limiter_shape"]


def limiter_shape(rate: int, period_s: float, burst: int) -> tuple[float, float]:
    """Return ``(capacity, seconds_per_capacity)`` for an AsyncLimiter that keeps every
    ``period_s`` window at or below ``rate`` requests while allowing ``burst`` at once.

    The burst is capped at a tenth of the window, so the sustained rate keeps at least
    90 % of ``rate / period_s``."""
    capacity = float(max(1, min(burst, rate // 10)))
    drain_per_s = max(rate - capacity, 1.0) / period_s
    return capacity, capacity / drain_per_s


class RequestGate:
    """The one gate every API request passes (submissions and polls share it)."""

    #: rate factor floor under repeated 429s
    MIN_FACTOR = 0.05
    DECREASE = 0.5
    #: fraction of the configured rate regained per second without a 429
    INCREASE_PER_S = 0.05

    def __init__(
        self, rate: int, period_s: float, burst: int = 1, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.clock = clock
        self.rate = rate
        self.period_s = period_s
        capacity, seconds = limiter_shape(rate, period_s, burst)
        #: the sustained pace the hard cap allows, and the burst it allows on top
        self.sustained_per_s = (rate - capacity) / period_s
        self.burst = capacity
        self._hard = AsyncLimiter(capacity, seconds)
        # Submissions go before polls: an idle slot costs more than a late poll.
        self._submits_waiting = 0
        self._no_submits_waiting = asyncio.Event()
        self._no_submits_waiting.set()
        self._factor = 1.0
        self._factor_at = self.clock.monotonic()
        self._paused_until = 0.0
        self._next_slot = 0.0
        self._last_decrease = -1e9
        self.throttled = 0  # 429s seen

    @property
    def rate_per_s(self) -> float:
        """The configured ceiling in requests per second."""
        return self.rate / self.period_s

    @property
    def factor(self) -> float:
        """Current fraction of the configured rate the pacer allows (1.0 = unthrottled)."""
        now = self.clock.monotonic()
        if self._factor < 1.0:
            self._factor = min(1.0, self._factor + (now - self._factor_at) * self.INCREASE_PER_S)
        self._factor_at = now
        return self._factor

    async def acquire(self, urgent: bool = False) -> None:
        """Wait until one more request may be sent. ``urgent`` requests (submissions)
        overtake the others still waiting to enter the limiter."""
        if not urgent:
            await self._no_submits_waiting.wait()
            await self._pace()
            await self._hard.acquire()
            return
        self._submits_waiting += 1
        self._no_submits_waiting.clear()
        try:
            await self._pace()
            await self._hard.acquire()
        finally:
            self._submits_waiting -= 1
            if not self._submits_waiting:
                self._no_submits_waiting.set()

    async def _pace(self) -> None:
        while True:
            now = self.clock.monotonic()
            if now < self._paused_until:
                await self.clock.sleep(self._paused_until - now)
                continue
            factor = self.factor
            if factor < 1.0:
                # Pace requests evenly at the reduced rate; each caller books its own slot
                # synchronously, so no two callers share one.
                spacing = 1.0 / (self.rate_per_s * factor)
                slot = max(now, self._next_slot)
                self._next_slot = slot + spacing
                if slot > now:
                    await self.clock.sleep(slot - now)
            return

    def throttle(self, retry_after_s: float | None) -> None:
        """Record a 429: slow down and pause every request for ``retry_after_s`` (or a
        short default) so the provider is not hammered."""
        self.throttled += 1
        now = self.clock.monotonic()
        # A burst of 429s answers one overshoot: decrease once per second, not per answer.
        if now - self._last_decrease >= 1.0:
            self._factor = max(self.MIN_FACTOR, self.factor * self.DECREASE)
            self._factor_at = now
            self._last_decrease = now
        pause = retry_after_s if retry_after_s is not None else min(5.0, self.period_s / 20)
        self._paused_until = max(self._paused_until, now + pause)
