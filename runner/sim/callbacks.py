"""Webhook delivery for ``request_type: callback`` tasks.

Contract: :meth:`CallbackSender.schedule` is called once per callback task at submission;
when the task reaches its terminal state (a timer at its completion time, no polling) the
sender POSTs the status envelope to the task's ``callback_url``. An attempt that is not
answered 200 within ``callback_timeout_s`` (scaled) is retried after each of
``callback_retry_delays_s`` (scaled) in turn, then given up. ``p_cb_drop`` skips a delivery
entirely; ``p_cb_duplicate`` starts a second, independent delivery of the same payload.
Every timer and delivery belongs to the sender and is cancelled by :meth:`close`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import aiohttp

from runner.sim.config import SimConfig
from runner.sim.stats import SimStats
from runner.sim.tasks import Task

_HEADERS = {"Content-Type": "application/json", "User-Agent": "apixo-sim/1"}


class CallbackSender:
    """Owns the webhook timers, the delivery tasks and their HTTP session."""

    def __init__(
        self,
        config: Callable[[], SimConfig],
        stats: SimStats,
        rng: random.Random,
        payload: Callable[[Task], bytes],
    ) -> None:
        # ``config`` is a getter: the server's config object may be replaced or mutated.
        self._config = config
        self._stats = stats
        self._rng = rng
        self._payload = payload
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers=_HEADERS)

    async def close(self) -> None:
        """Cancel every pending timer and delivery, then close the session."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        deliveries = list(self._deliveries)
        for t in deliveries:
            t.cancel()
        await asyncio.gather(*deliveries, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def schedule(self, task: Task) -> None:
        """Arrange the webhook of ``task`` for its completion time."""
        delay_s = max(0.0, task.complete_ms / 1000 - time.time())
        loop = asyncio.get_running_loop()
        self._timers[task.task_id] = loop.call_later(delay_s, self._fire, task)

    def _fire(self, task: Task) -> None:
        self._timers.pop(task.task_id, None)
        cfg = self._config()
        if cfg.p_cb_drop and self._rng.random() < cfg.p_cb_drop:
            self._stats.callbacks_dropped += 1
            return
        copies = 2 if cfg.p_cb_duplicate and self._rng.random() < cfg.p_cb_duplicate else 1
        body = self._payload(task)
        assert task.submission.callback_url is not None
        for _ in range(copies):
            t = asyncio.get_running_loop().create_task(
                self._deliver(task.submission.callback_url, body)
            )
            self._deliveries.add(t)
            t.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, body: bytes) -> None:
        attempt = 0
        while True:
            if await self._attempt(url, body):
                return
            delays = self._config().callback_retry_delays_s
            if attempt >= len(delays):
                self._stats.callbacks_given_up += 1
                return
            await asyncio.sleep(self._config().scaled(delays[attempt]))
            attempt += 1

    async def _attempt(self, url: str, body: bytes) -> bool:
        """One POST; True when the receiver answered 200 in time."""
        assert self._session is not None
        cfg = self._config()
        # aiohttp reads a zero timeout as "none": keep a scale of 0 from waiting forever.
        timeout = aiohttp.ClientTimeout(total=max(0.001, cfg.scaled(cfg.callback_timeout_s)))
        self._stats.callbacks_sent += 1
        status = 0
        try:
            async with self._session.post(url, data=body, timeout=timeout) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            status = 0
        self._stats.requests["callback", status] += 1
        if status == 200:
            self._stats.callbacks_delivered += 1
            return True
        self._stats.callbacks_failed += 1
        return False
