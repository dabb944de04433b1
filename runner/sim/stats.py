"""Live counters of the simulator, for tests and for ``GET /_sim/stats``.

Contract: the server only ever adds to these counters (``live`` and ``images_billed`` are
computed on read from the server's bookkeeping, because task states follow the clock); a
test reads them at any moment, between requests, without locking (everything runs on one
event loop). With a state folder, ``tasks_created``, ``submissions_per_prompt``,
``credits_spent`` and ``images_billed`` count over the folder's life, the others over this
server process's.

``requests`` is keyed by ``(endpoint, status)`` where ``endpoint`` is ``"generate"``,
``"status"``, ``"file"`` or ``"callback"`` (outgoing webhook attempts) and ``status`` is the
HTTP status answered, or 0 when the connection was reset or the webhook attempt got no
answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _zero() -> int:
    return 0


@dataclass
class SimStats:
    """Counters of one simulator instance. See the module docstring for the keys."""

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    # Tasks created per prompt: a prompt counted twice was paid for twice.
    submissions_per_prompt: Counter[str] = field(default_factory=Counter)
    tasks_created: int = 0
    peak_live: int = 0
    images_served: int = 0  # complete 200/206 file bodies sent
    bytes_served: int = 0
    callbacks_sent: int = 0  # webhook POST attempts
    callbacks_delivered: int = 0  # attempts answered 200
    callbacks_failed: int = 0  # attempts answered otherwise or not at all
    callbacks_dropped: int = 0  # deliveries never attempted (p_cb_drop)
    callbacks_given_up: int = 0  # deliveries whose every retry failed
    credits_spent: int = 0  # images taken off the balance at submission (tasks that succeed)
    # Injected faults by kind: 429, 5xx, reset, reset_after, 5xx_after_create, slow,
    # bad_status, foreign_live (a 429 only the foreign slots caused), truncate, corrupt,
    # wrong_type, html, oversize, hostile.
    faults: Counter[str] = field(default_factory=Counter)
    _live_fn: Callable[[], int] = field(default=_zero, repr=False, compare=False)
    _billed_fn: Callable[[], int] = field(default=_zero, repr=False, compare=False)

    @property
    def live(self) -> int:
        """Tasks pending or processing right now, over all keys."""
        return self._live_fn()

    @property
    def images_billed(self) -> int:
        """Images of every task in ``success`` by now: what the API bills."""
        return self._billed_fn()

    def count(self, endpoint: str | None = None, status: int | None = None) -> int:
        """Requests seen, optionally only those of ``endpoint`` and/or with ``status``."""
        return sum(
            n
            for (ep, st), n in self.requests.items()
            if (endpoint is None or ep == endpoint) and (status is None or st == status)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view: ``requests`` becomes ``{endpoint: {status: count}}``."""
        requests: dict[str, dict[str, int]] = {}
        for (ep, st), n in sorted(self.requests.items()):
            requests.setdefault(ep, {})[str(st)] = n
        return {
            "requests": requests,
            "submissions_per_prompt": dict(self.submissions_per_prompt),
            "tasks_created": self.tasks_created,
            "live": self.live,
            "peak_live": self.peak_live,
            "images_served": self.images_served,
            "bytes_served": self.bytes_served,
            "callbacks_sent": self.callbacks_sent,
            "callbacks_delivered": self.callbacks_delivered,
            "callbacks_failed": self.callbacks_failed,
            "callbacks_dropped": self.callbacks_dropped,
            "callbacks_given_up": self.callbacks_given_up,
            "credits_spent": self.credits_spent,
            "images_billed": self.images_billed,
            "faults": dict(self.faults),
        }
