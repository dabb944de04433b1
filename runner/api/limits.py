"""Request-rate limiting: the one gate every API request of a run passes.

Three layers, all awaited by :meth:`RequestGate.acquire` before a request is sent:

* a pace, an :class:`aiolimiter.AsyncLimiter` (a leaky bucket): bursts of up to half the
  window's ``rate`` (a fresh run fills every slot at once; polls banked while nothing
  could finish meet a wave of completions), then the full rate, ``rate / period_s``;
* the window the provider counts: a log of this run's send times, so that **no window**
  of ``period_s`` seconds ever holds more than ``rate`` less a margin (1 %) for the
  latency between sending and arriving. A leaky bucket alone must either forbid bursts or
  give up sustained rate (capacity plus a period's drain must stay within ``rate``); the
  log allows both, and banks quiet spells exactly as the provider's window does. The
  log starts with what an earlier run still has in the provider's window
  (:meth:`RequestGate.follow`, from that run's record of it, :meth:`RequestGate.sends`).
  Polls leave the last :attr:`RequestGate.SUBMIT_RESERVE` share of a window to
  submissions: an idle slot costs more than a late poll;
* a soft pacer that backs off on 429 (multiplicative decrease, honouring ``Retry-After``
  with a global pause) and recovers additively on success, so a provider that is stricter
  than configured is slowed down to, not hammered.

Owns: when the next request may leave. Must not know: what the requests are for (beyond
"a submission goes first"), the ledger, the manifest. The window and the pacer keep the
clock they are given; the leaky bucket keeps the event loop's time (aiolimiter's).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from runner.clock import SYSTEM_CLOCK, Clock

__all__ = ["SAVE_EVERY_S", "SEND_STEP_S", "RequestGate", "SendLog", "limiter_shape"]

#: how often a run saves its sends (:meth:`RequestGate.sends`), and their time step
SAVE_EVERY_S = 1.0
SEND_STEP_S = 0.1
#: a record saved this long before its run's last ledger write was not kept up to date
STALE_S = 3 * SAVE_EVERY_S


def unsaved_max(rate: int) -> int:
    """Requests a run may send before its record of them is saved again: 1 % of the
    window (at most 100), so what a killed run did not record is that at most."""
    return max(1, min(100, rate // 100))


@dataclass(frozen=True, slots=True)
class SendLog:
    """What a run saved of its requests (:meth:`RequestGate.sends`): ``counts[i]`` were
    sent at least ``i`` steps of ``step_s`` before ``at`` (Unix seconds), and less than
    ``i + 2``; ``final``: saved as the run ended (nothing was sent after ``at``)."""

    at: float
    step_s: float
    counts: tuple[int, ...]
    final: bool


def limiter_shape(rate: int, period_s: float) -> tuple[float, float]:
    """Return ``(capacity, seconds_per_capacity)`` for an AsyncLimiter that allows half
    of ``rate`` at once and then ``rate`` per ``period_s``. The window log
    (:meth:`RequestGate.room`) keeps every window within ``rate``."""
    capacity = float(max(1, rate // 2))
    return capacity, capacity * period_s / rate


def window_limit(rate: int) -> int:
    """Requests this run sends in any window: ``rate`` less a 1 % margin (at least one)
    for the latency between sending a request and its arrival."""
    return max(1, rate - max(1, rate // 100))


class RequestGate:
    """The one gate every API request passes (submissions and polls share it)."""

    #: rate factor floor under repeated 429s
    MIN_FACTOR = 0.05
    DECREASE = 0.5
    #: fraction of the configured rate regained per second without a 429
    INCREASE_PER_S = 0.05
    #: share of each window that polls leave to submissions
    SUBMIT_RESERVE = 0.02

    def __init__(
        self, rate: int, period_s: float, burst: int = 1, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.clock = clock
        self.rate = rate
        self.period_s = period_s
        capacity, seconds = limiter_shape(rate, period_s)
        self.limit = window_limit(rate)
        #: the sustained pace the window allows, and the burst a run opens with (its
        #: slots filled at once: ``burst``, at most a tenth of the window)
        self.sustained_per_s = self.limit / period_s
        self.burst = float(max(1, min(burst, rate // 10)))
        #: the most the pace lets through at once
        self.capacity = capacity
        #: called (synchronously, before the request leaves) once this many requests were
        #: sent since the last :meth:`sends`, so that a record of them never lags more
        self.unsaved_max = unsaved_max(rate)
        self.on_unsaved: Callable[[], None] | None = None
        self._unsaved = 0
        self._hard = AsyncLimiter(capacity, seconds)
        self._sent: deque[float] = deque()  # send times within the last window
        # the same, counted per SEND_STEP_S of the clock: [step index, requests]
        self._steps: deque[list[int]] = deque()
        self._poll_limit = max(1, int(self.limit * (1 - self.SUBMIT_RESERVE)))
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
            await self._window(self._poll_limit)
            return
        self._submits_waiting += 1
        self._no_submits_waiting.clear()
        try:
            await self._pace()
            await self._hard.acquire()
            await self._window(self.limit)
        finally:
            self._submits_waiting -= 1
            if not self._submits_waiting:
                self._no_submits_waiting.set()

    def follow(self, last_wall: float | None, log: SendLog | None = None) -> bool:
        """Count what an earlier run with this key sent in the API's window, so a run
        started right after another keeps to what the API still allows instead of
        meeting 429s. ``log``: that run's own record of its sends (:meth:`sends`), saved
        before its first request, every :data:`SAVE_EVERY_S`, whenever
        :attr:`unsaved_max` more were sent, and as it ended; its counts are taken as sent
        at the newer end of their step (they leave the window a step late at most). A
        run killed after its last save sent at most :attr:`unsaved_max` more, taken as
        sent when its next save was due (or at ``last_wall``, when it last wrote its
        ledger, if later). With no record to trust (none, one older than the window, or
        one its run stopped keeping while it wrote its ledger on), the minute before
        ``last_wall`` is taken as the most the gate could have let through: a burst of
        :attr:`capacity` at its end, the full pace before it, a window in all. Returns
        whether that was assumed (and part of it is still in the window)."""
        now_wall, now = self.clock.wall(), self.clock.monotonic()
        gone = now - self.period_s  # sent at or before this: out of the window
        sent: list[tuple[float, int]] = []  # (monotonic time, requests)
        assumed = False
        trusted = log is not None and (
            now_wall - log.at < self.period_s + SAVE_EVERY_S  # not older than the window
            and (log.final or (last_wall or 0.0) <= log.at + STALE_S)  # and kept up
        )
        if log is not None and trusted:
            at = now - max(0.0, now_wall - log.at)
            sent += [(at - i * log.step_s, n) for i, n in enumerate(log.counts) if n]
            if not log.final:
                # Killed after it: at most unsaved_max more, by SAVE_EVERY_S later (or by
                # its ledger's last write), when the next save was due.
                end = now - max(0.0, now_wall - max(log.at + SAVE_EVERY_S, last_wall or 0.0))
                sent.append((end, self.unsaved_max))
        elif last_wall is not None:
            # No record to trust (none, too old, or its saving failed while the run went
            # on): the most the gate could have let through in the minute before.
            end = now - max(0.0, now_wall - last_wall)
            burst = int(self.capacity)
            step = self.period_s / self.limit  # the full pace
            paced = max(0, self.limit - burst)
            sent += [(end, burst), *((end - (i + 1) * step, 1) for i in range(paced))]
            assumed = end > gone
        times: list[float] = []  # newest first, at most a window
        for t, n in sorted(sent, reverse=True):
            if t <= gone or len(times) >= self.limit:
                break
            times.extend([min(t, now)] * min(n, self.limit - len(times)))
        self._sent.extendleft(times)
        for t in reversed(times):  # oldest first
            self._count(t)
        return assumed

    def sends(self) -> list[int]:
        """This run's requests in the last window (and an earlier run's still in it), by
        age: ``[i]`` were sent at least ``i`` steps of :data:`SEND_STEP_S` ago, and less
        than ``i + 2`` (for :meth:`follow` in the next run, which takes them as sent
        ``i`` steps ago: never older than they are). Trailing zeros are left off."""
        now = self.clock.monotonic()
        self._expire(now)
        self._unsaved = 0
        current = int(now / SEND_STEP_S)
        counts = [0] * (int(self.period_s / SEND_STEP_S) + 2)
        for step, n in self._steps:
            counts[min(len(counts) - 1, max(0, current - step - 1))] += n
        while counts and not counts[-1]:
            counts.pop()
        return counts

    def _count(self, t: float) -> None:
        step = int(t / SEND_STEP_S)
        steps = self._steps
        if steps and steps[-1][0] == step:
            steps[-1][1] += 1
        else:
            steps.append([step, 1])

    def room(self) -> int:
        """Polls that may leave now without any window holding more than its share."""
        self._expire(self.clock.monotonic())
        return max(0, self._poll_limit - len(self._sent))

    def _expire(self, now: float) -> None:
        cutoff = now - self.period_s
        sent = self._sent
        while sent and sent[0] <= cutoff:
            sent.popleft()
        # a step leaves once every send in it has (a step late at most: never early)
        steps, last = self._steps, int(cutoff / SEND_STEP_S)
        while steps and steps[0][0] < last:
            steps.popleft()

    async def _window(self, limit: int) -> None:
        """Wait until the window has room under ``limit``, then count this request."""
        while True:
            now = self.clock.monotonic()
            self._expire(now)
            if len(self._sent) < limit:
                self._sent.append(now)
                self._count(now)
                self._unsaved += 1
                if self._unsaved >= self.unsaved_max and self.on_unsaved is not None:
                    self.on_unsaved()  # before the request leaves: never more unrecorded
                return
            await self.clock.sleep(
                max(1e-3, self._sent[len(self._sent) - limit] + self.period_s - now)
            )

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
