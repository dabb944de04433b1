"""Per-key request windows and live-task counts, both O(1) amortised per request.

Contract: :meth:`Limits.hit` records one request in the key's sliding window (a deque of
monotonic timestamps, REAL seconds) and says whether the window was already full; rejected
requests are recorded too, as the API page assumes they count. Live tasks are a heap of
completion times per key (``inf`` for a task that never completes): counting them pops the
ones already finished, so no task is ever scanned twice.
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
