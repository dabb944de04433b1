"""The simulator's books: every task it knows, their live slots, billing and balance, and
the state folder that keeps them across server processes.

Contract: :meth:`Books.create` enters a new task: its line goes to the state folder (if
any) *first*, with one write, so a task whose submission was answered is never lost; then
the balance (``config.credits``) and ``credits_spent`` drop by the images it will make,
and the task joins the records, the live-slot heaps, billing and the per-prompt counts.
:meth:`Books.open` enters the tasks a folder holds the same way, without touching the
balance (the folder's last recorded balance replaces the configured one, if there is
one). Which tasks are live and which are billed follow the clock (see
:mod:`~runner.sim.limits` and :mod:`~runner.sim.billing`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from runner.sim.billing import Billing
from runner.sim.config import SimConfig
from runner.sim.limits import Limits
from runner.sim.stats import SimStats
from runner.sim.store import StateFile, billed_at_submission, task_record
from runner.sim.tasks import Task


class Books:
    """Records, live slots, billing and balance of one server; the state folder's writer."""

    def __init__(self, config: Callable[[], SimConfig]) -> None:
        # ``config`` is a getter: the server's config object may be replaced or mutated.
        self._config = config
        self.tasks: dict[str, Task] = {}
        self.limits = Limits()
        self._billing = Billing()
        self._state: StateFile | None = None
        self.stats = SimStats(
            _live_fn=lambda: self.limits.total_live(time.time() * 1000),
            _billed_fn=lambda: self._billing.billed(time.time() * 1000),
        )

    def open(self, state_dir: Path, secret: bytes) -> bytes:
        """Take over what ``state_dir``'s previous servers recorded; return the URL key.

        ``secret`` is recorded and returned when the folder has none yet. Raises
        :class:`~runner.sim.store.StateFolderBusy` if another simulator has it open.
        """
        self._state, saved = StateFile.open(state_dir)
        if saved.secret is None:
            self._state.append({"kind": "secret", "secret": secret.hex()})
        if saved.credits is not None:
            self._config().credits = saved.credits
        for task in saved.tasks:
            self._enter(task)
            self.stats.credits_spent += billed_at_submission(task)
        self.stats.peak_live = max(self.stats.peak_live, self.stats.live)
        return saved.secret if saved.secret is not None else secret

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None

    def create(self, task: Task) -> None:
        """Enter a new task; see the module docstring."""
        cfg = self._config()
        billed = billed_at_submission(task)
        credits = None if cfg.credits is None else cfg.credits - billed
        if self._state is not None:
            # Before any answer: a kill -9 right after it must not lose the task.
            self._state.append(task_record(task, credits))
        cfg.credits = credits
        self.stats.credits_spent += billed
        self._enter(task)
        self.stats.peak_live = max(self.stats.peak_live, self.stats.live)

    def note_credits(self) -> None:
        """Record a balance set from outside (``POST /_sim/config``) in the state folder."""
        if self._state is not None:
            self._state.append({"kind": "credits", "credits": self._config().credits})

    def _enter(self, task: Task) -> None:
        self.tasks[task.task_id] = task
        if task.stuck or task.complete_ms > time.time() * 1000:
            self.limits.add(task.key, math.inf if task.stuck else task.complete_ms)
        self._billing.add(task)
        self.stats.tasks_created += 1
        self.stats.submissions_per_prompt[task.submission.prompt] += 1
