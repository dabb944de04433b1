"""The polling scheduler: one timer heap for every live task, a few workers to poll.

A job that has a task calls :meth:`Poller.watch` and awaits the returned future; the
scheduler decides when to ask the API about that task and resolves the future with the
terminal :class:`~runner.client.TaskStatus`. No coroutine sleeps per task: one loop sleeps
until the earliest due time and hands due tasks to a small pool of workers.

When to poll: until enough completions have been seen, the configured recipe
(``initial_delay`` after submission, then every ``interval``). After that, polls follow a
ladder of quantiles of the completion times observed for tasks of the same kind
(resolution, image count): the k-th poll of a task lands where a k/m share of such tasks
is done. The ladder's length m is what the request budget affords: with R requests a
second, L live tasks and a mean completion time D, each task may spend R*D/L requests;
one goes to the submission and a ladder of m rungs costs about (m+1)/2 polls, so m
follows. Fewer live tasks (a small campaign, the tail of a big one) buy a finer ladder
and less detection lag. Every wait is jittered by ``jitter`` (of the wait, or of
``interval`` where that is shorter) so polls never march in lockstep.

A webhook (callback mode) resolves a task through :meth:`Poller.deliver`; the heap entry
is then skipped lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from .client import ApiClient, TaskStatus
from .errors import TransientApiError

__all__ = ["CompletionModel", "PollTimeout", "Poller"]

log = logging.getLogger("runner.poll")


class PollTimeout(Exception):
    """The task outlived ``polling.timeout`` in this run; it stays live on the API."""


class CompletionModel:
    """Observed completion times (seconds from submission), per kind of task."""

    MIN_SAMPLES = 20
    WINDOW = 400

    def __init__(self) -> None:
        self._samples: dict[Hashable, deque[float]] = {}
        self._sorted: dict[Hashable, list[float]] = {}

    def observe(self, kind: Hashable, seconds: float) -> None:
        if seconds <= 0:
            return
        window = self._samples.setdefault(kind, deque(maxlen=self.WINDOW))
        window.append(seconds)
        self._sorted.pop(kind, None)

    def quantile(self, kind: Hashable, p: float) -> float | None:
        samples = self._samples.get(kind)
        if samples is None or len(samples) < self.MIN_SAMPLES:
            return None
        ordered = self._sorted.get(kind)
        if ordered is None:
            ordered = self._sorted[kind] = sorted(samples)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    def mean(self, kind: Hashable) -> float | None:
        samples = self._samples.get(kind)
        if samples is None or len(samples) < self.MIN_SAMPLES:
            return None
        return sum(samples) / len(samples)


@dataclass(slots=True)
class _Watch:
    task_id: str
    kind: Hashable
    submitted: float  # monotonic seconds
    future: asyncio.Future[TaskStatus]
    polls: int = 0
    due: float = 0.0
    deadline: float = 0.0
    failures: int = 0
    seen_unknown: set[str] = field(default_factory=set)


class Poller:
    """Polls every watched task at the right moments and resolves its future."""

    #: share of the request budget polling plans to use (the rest absorbs retries)
    BUDGET_SHARE = 0.85
    MIN_RUNGS, MAX_RUNGS = 2, 24
    #: callback mode: the share of tasks expected done when the one early look comes;
    #: about 1 - this share of tasks (plus the dropped webhooks) get polled once
    CALLBACK_EARLY_QUANTILE = 0.9
    #: callback mode, before any completion time is known: overdue at this many
    #: ``initial_delay``s (50 s with the provider's 20 s: past most 2K and many 4K tasks)
    CALLBACK_FALLBACK_FACTOR = 2.5

    def __init__(
        self,
        client: ApiClient,
        *,
        initial_delay_s: float,
        interval_s: float,
        jitter: float,
        timeout_s: float,
        workers: int = 64,
        callbacks: bool = False,
        request_rate: float = float("inf"),
    ) -> None:
        self.client = client
        self.initial_delay_s = initial_delay_s
        self.interval_s = interval_s
        self.jitter = jitter
        self.timeout_s = timeout_s
        self.model = CompletionModel()
        #: API requests per second the run may spend (submissions and polls together)
        self.request_rate = request_rate
        #: webhooks are expected: poll only tasks whose webhook is overdue
        self.callbacks = callbacks
        #: seconds from completion to webhook arrival, recent deliveries
        self.lags: deque[float] = deque(maxlen=400)
        self._workers = workers
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._watches: dict[str, _Watch] = {}
        self._wake = asyncio.Event()
        self._due: asyncio.Queue[_Watch] = asyncio.Queue()
        self.polls = 0
        self.resolved_by_poll = 0
        self.resolved_by_webhook = 0

    @property
    def live(self) -> int:
        return len(self._watches)

    def watch(
        self, task_id: str, kind: Hashable, submitted_ago_s: float = 0.0, poll_now: bool = False
    ) -> asyncio.Future[TaskStatus]:
        """Start watching a task submitted ``submitted_ago_s`` seconds ago; with
        ``poll_now``, ask about it at once (a task left in flight by an earlier run)."""
        now = time.monotonic()
        w = _Watch(task_id, kind, now - submitted_ago_s, asyncio.get_running_loop().create_future())
        w.deadline = w.submitted + self.timeout_s
        self._watches[task_id] = w
        if poll_now:
            delay = 0.0
        else:
            age = self._first_age(kind)
            delay = self._jittered(max(0.0, age - submitted_ago_s))
        self._schedule(w, delay, now)
        return w.future

    def watching(self, task_id: str) -> bool:
        """Whether the task is still waited on (not yet resolved, forgotten or failed)."""
        return task_id in self._watches

    def forget(self, task_id: str) -> None:
        """Stop watching (the job was cancelled); its heap entry is skipped lazily."""
        self._watches.pop(task_id, None)

    def deliver(self, status: TaskStatus) -> bool:
        """Resolve a task from a webhook. Returns False if the task is not watched."""
        w = self._watches.get(status.task_id)
        if w is None or not status.state.terminal:
            return False
        if status.complete_ms is not None:
            self.lags.append(max(0.0, time.time() - status.complete_ms / 1000))
        self.resolved_by_webhook += 1
        self._finish(w, status)
        return True

    # -- timing policy -----------------------------------------------------------------

    def _jittered(self, seconds: float) -> float:
        spread = self.jitter * min(seconds, self.interval_s)
        return max(0.0, seconds + random.uniform(-spread, spread))

    def rungs(self, kind: Hashable) -> int:
        """How many quantile rungs the request budget affords for this kind now."""
        mean = self.model.mean(kind)
        if mean is None:
            return self.MIN_RUNGS
        per_task = self.request_rate * self.BUDGET_SHARE * mean / max(1, self.live)
        polls = per_task - 1.0  # one request is the submission
        return max(self.MIN_RUNGS, min(self.MAX_RUNGS, int(2 * polls - 1)))

    def _first_age(self, kind: Hashable) -> float:
        """How old a task should be when it is first polled."""
        if self.callbacks:
            # One early look where most tasks are done (a dropped webhook then costs a
            # few seconds, not the whole tail); then the overdue mark.
            early = self.model.quantile(kind, self.CALLBACK_EARLY_QUANTILE)
            return early if early is not None else self._overdue_age(kind)
        first = self.model.quantile(kind, 1 / self.rungs(kind))
        return first if first is not None else self.initial_delay_s

    def _overdue_age(self, kind: Hashable) -> float:
        """Callback mode: the age after which a missing webhook is overdue. Nearly every
        task of this kind is done by the 99th percentile; the margin covers delivery lag
        (learned from deliveries that did arrive)."""
        late = self.model.quantile(kind, 0.99)
        if late is None:
            return self.initial_delay_s * self.CALLBACK_FALLBACK_FACTOR
        lags = sorted(self.lags)
        lag = lags[int(0.95 * (len(lags) - 1))] if lags else 0.0
        return late + max(self.interval_s / 2, 3 * lag)

    def _next_delay(self, w: _Watch, now: float) -> float:
        age = now - w.submitted
        if self.callbacks:
            overdue = self._overdue_age(w.kind)
            if overdue > age:
                return self._jittered(overdue - age)
            # The webhook may still come: back off, but keep checking.
            return self._jittered(min(self.interval_s * 2 ** (w.polls - 1), 10 * self.interval_s))
        # The next rung above the task's age: stateless, so a ladder that is refined or
        # coarsened as the budget changes simply takes over.
        m = self.rungs(w.kind)
        for rung in range(1, m + 1):
            target = self.model.quantile(w.kind, rung / m)
            if target is None:
                break
            if target > age + 1e-3:
                return self._jittered(target - age)
        return self._jittered(self.interval_s)

    def _schedule(self, w: _Watch, delay: float, now: float) -> None:
        w.due = min(now + delay, w.deadline)
        heapq.heappush(self._heap, (w.due, next(self._seq), w))
        if self._heap[0][2] is w:
            self._wake.set()

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the timer loop and the poll workers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for _ in range(self._workers):
                tg.create_task(self._worker())
            await self._timer()

    async def _timer(self) -> None:
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, w = heapq.heappop(self._heap)
                if self._watches.get(w.task_id) is not w or w.future.done():
                    continue  # resolved by a webhook, forgotten, or rescheduled
                if now >= w.deadline:
                    self._fail(w, PollTimeout(f"task {w.task_id} outlived polling.timeout"))
                    continue
                self._due.put_nowait(w)
            self._wake.clear()
            timeout = self._heap[0][0] - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _worker(self) -> None:
        while True:
            w = await self._due.get()
            if w.future.done() or self._watches.get(w.task_id) is not w:
                continue
            await self._poll(w)

    async def _poll(self, w: _Watch) -> None:
        w.polls += 1
        self.polls += 1
        try:
            status = await self.client.status(w.task_id)
        except TransientApiError as exc:
            # Retries inside the client are exhausted; keep the task and try later.
            log.warning("polling %s failed for now: %s", w.task_id, exc)
            self._schedule(w, self._jittered(self.interval_s * 2), time.monotonic())
            return
        except Exception as exc:  # permanent, fatal or unexpected: the job decides
            self._fail(w, exc)
            return
        if w.future.done():
            return
        if status.state.terminal:
            self.resolved_by_poll += 1
            self._finish(w, status)
            return
        if status.raw_state not in ("pending", "processing") and (
            status.raw_state not in w.seen_unknown
        ):
            w.seen_unknown.add(status.raw_state)
            log.warning("task %s is in undocumented state %r", w.task_id, status.raw_state)
        now = time.monotonic()
        self._schedule(w, self._next_delay(w, now), now)

    def _finish(self, w: _Watch, status: TaskStatus) -> None:
        self._watches.pop(w.task_id, None)
        if status.create_ms is not None and status.complete_ms is not None:
            seconds = (status.complete_ms - status.create_ms) / 1000
        else:
            seconds = time.monotonic() - w.submitted
        self.model.observe(w.kind, seconds)
        if not w.future.done():
            w.future.set_result(status)

    def _fail(self, w: _Watch, exc: BaseException) -> None:
        self._watches.pop(w.task_id, None)
        if not w.future.done():
            w.future.set_exception(exc)
