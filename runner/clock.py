"""The one clock: every part of a run that measures, waits or stamps time takes it from
a :class:`Clock` it is given, so tests can drive time instead of sleeping through it.

Two readings, for two purposes:

* :meth:`Clock.monotonic`: seconds for intervals (request pacing, poll scheduling,
  backoff windows, completion times). Never jumps; its zero means nothing.
* :meth:`Clock.wall`: Unix seconds, for what is written down or compared with the API's
  own timestamps (ledger lines, a task's ``completeTime``, an HTTP-date ``Retry-After``).

and one wait, :meth:`Clock.sleep`, for the loops that pace themselves by it (the poll
allocator, the request pacer, retry backoff, the drain). A fake clock advances its
readings when slept on (``tests/clocks.py``). Two waits stay on the event loop's own
timer, because an event must be able to cut them short: ``--deadline`` and a
submission's pause before it is sent again (a stop ends it). What the display and the
report show (:mod:`runner.present`) reads the system's time directly.

Owns: nothing but time. Must not know: anything else.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def wall(self) -> float:
        """Unix seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """Real time: :func:`time.monotonic`, :func:`time.time`, :func:`asyncio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Final[Clock] = SystemClock()
