"""Per-key request windows and live-task counts, both O(1) amortised per request.

Contract: :meth:`Limits.hit` records one request in the key's sliding window (a deque of
monotonic timestamps, REAL seconds) and says whether the window was already full; rejected
requests are recorded too, as the API page assumes they count. Live tasks are a heap of
completion times per key (``inf`` for a task that never completes): counting them pops the
ones already finished, so no task is ever scanned twice.

:meth:`Limits.foreign` says how many live slots of every key another client holds
(``foreign_live``) at a moment: all of them until ``hold_ms`` after the hold began (0:
forever). The hold begins at the first call and again whenever ``count`` or ``hold_ms``
differ from the previous call, so a change of the knobs starts a new hold.
"""

from __future__ import annotations

import heapq
from collections import deque


class Limits:
    """Per-key sliding request windows and live-task heaps."""

    def __init__(self) -> None:
        self._windows: dict[str, deque[float]] = {}
        self._live: dict[str, list[float]] = {}
        self._total_live = 0
        self._foreign: tuple[int, float] | None = None  # (count, hold_ms) of the hold
        self._foreign_since_ms = 0.0

    def hit(self, key: str, now_s: float, rate: int, period_s: float) -> bool:
        """Record one request; True if the window already held ``rate`` requests."""
        window = self._windows.setdefault(key, deque())
        cutoff = now_s - period_s
        while window and window[0] <= cutoff:
            window.popleft()
        over = len(window) >= rate
        window.append(now_s)  # rejected requests count against the window too
        return over

    def live(self, key: str, now_ms: float) -> int:
        heap = self._live.get(key)
        if not heap:
            return 0
        while heap and heap[0] <= now_ms:
            heapq.heappop(heap)
            self._total_live -= 1
        return len(heap)

    def add(self, key: str, complete_ms: float) -> None:
        heapq.heappush(self._live.setdefault(key, []), complete_ms)
        self._total_live += 1

    def total_live(self, now_ms: float) -> int:
        for key in self._live:
            self.live(key, now_ms)
        return self._total_live

    def foreign(self, now_ms: float, count: int, hold_ms: float) -> int:
        """Slots held by another client at ``now_ms``; see the module docstring."""
        if (count, hold_ms) != self._foreign:
            self._foreign_since_ms = now_ms
        self._foreign = (count, hold_ms)
        if hold_ms and now_ms >= self._foreign_since_ms + hold_ms:
            return 0
        return count
