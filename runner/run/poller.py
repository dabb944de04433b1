"""The polling scheduler: one allocation loop for every live task, a few workers to poll.

A job that has a task calls :meth:`Poller.watch` and awaits the returned future; the
scheduler decides when to ask the API about that task and resolves the future with the
terminal :class:`~runner.client.TaskStatus`. No coroutine sleeps per task: one loop wakes
every :attr:`Poller.TICK_S` and hands the chosen tasks to a small pool of workers.

What a poll is worth: completion times are learned per kind of task (resolution, image
count) by :class:`CompletionModel`, a Kaplan-Meier estimate in which tasks still running
count as censored. The worth of polling a task now is the probability that it finished
since its last poll. Each tick, the polls the request budget leaves after submissions
(``request_rate`` x :attr:`Poller.BUDGET_SHARE`, banked through quiet spells up to the
limiter's burst) go to the tasks worth the most, provided they clear a bar that falls
while budget goes unused. Before anything is known about a kind, a tenth of its tasks
scout with the provider's recipe (``initial_delay``, then every ``interval``, jittered
by ``jitter``) while the others wait, keeping the budget for the wave of completions;
a task older than any completion seen falls back to the recipe's interval.

Callback mode: webhooks resolve tasks through :meth:`Poller.deliver`; polling is the
safety net, with one early look where 90 % of such tasks are done and then the overdue
mark (99th percentile plus a margin learned from webhook lag).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from runner.api.answers import TaskStatus
from runner.api.client import ApiClient
from runner.api.outcome import Outcome
from runner.errors import ApiError

from .completion import CompletionModel, Sample

__all__ = ["PollTimeout", "Poller"]

log = logging.getLogger("runner.poll")


class PollTimeout(Exception):
    """The task outlived ``polling.timeout`` in this run; it stays live on the API."""


@dataclass(slots=True)
class _Watch:
    task_id: str
    kind: Hashable
    submitted: float  # monotonic seconds
    future: asyncio.Future[TaskStatus]
    sample: Sample
    deadline: float
    #: the gain a poll must promise before it is spent on this task (jittered per task)
    threshold: float
    next_at: float = 0.0  # recipe and callback modes: when the next poll is due
    last_poll: float = 0.0  # monotonic time of the last poll (submission time at first)
    job_id: str = ""
    polls: int = 0
    in_flight: bool = False
    seen_unknown: set[str] = field(default_factory=set)


class Poller:
    """Polls every watched task when it is worth it and resolves its future."""

    TICK_S = 0.1
    #: share of the sustained request rate that submissions and polls together may use;
    #: the rest absorbs retries
    BUDGET_SHARE = 0.9
    #: a poll is spent only on a task at least this likely to have finished since its
    #: last poll (when the budget is slack; when it binds, the likeliest go first)
    MIN_GAIN = 0.15
    #: the lowest the bar may drop while budget goes unused (MIN_GAIN * this)
    MIN_THRIFT = 0.3
    #: no task is polled more often than every interval * this
    MIN_SPACING = 0.25
    #: poll mode, before any completion of a kind is known: the share of tasks that
    #: follow the recipe (scouts); the others wait until the scouts' findings say when
    #: polling pays, keeping the budget for then (they fall back to the recipe at twice
    #: its initial delay if nothing is learned by then)
    SCOUT_SHARE = 0.1
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
        request_burst: float = 1.0,
    ) -> None:
        self.client = client
        self.initial_delay_s = initial_delay_s
        self.interval_s = interval_s
        self.jitter = jitter
        self.timeout_s = timeout_s
        self.model = CompletionModel()
        #: API requests per second the run may spend (submissions and polls together),
        #: and the burst the rate limiter allows after a quiet spell
        self.request_rate = request_rate
        self.request_burst = request_burst
        #: webhooks are expected: poll only tasks whose webhook is overdue
        self.callbacks = callbacks
        #: seconds from completion to webhook arrival, recent deliveries
        self.lags: deque[float] = deque(maxlen=400)
        self._workers = workers
        self._watches: dict[str, _Watch] = {}
        self._ended: dict[str, None] = {}  # recently ended task ids, oldest first
        self._due: asyncio.Queue[_Watch] = asyncio.Queue()
        self._tokens = 0.0
        self._thrift = 1.0  # scales MIN_GAIN: below 1 while the budget goes unused
        self._submits_seen = 0
        self._submit_rate = 0.0  # recent submissions per second (moving average)
        self.resolved_by_poll = 0
        self.resolved_by_webhook = 0

    @property
    def live(self) -> int:
        return len(self._watches)

    def overdue(self) -> int:
        """Callback mode: watched tasks older than their kind's overdue mark (their webhook
        is late); 0 in poll mode."""
        if not self.callbacks:
            return 0
        now = time.monotonic()
        marks: dict[Hashable, float] = {}
        count = 0
        for w in self._watches.values():
            mark = marks.get(w.kind)
            if mark is None:
                mark = marks[w.kind] = self._overdue_age(w.kind)
            count += now - w.submitted > mark
        return count

    def first_poll_in(self) -> float | None:
        """Seconds until the soonest poll is due (None when nothing is watched)."""
        if not self._watches:
            return None
        return max(0.0, min(w.next_at for w in self._watches.values()) - time.monotonic())

    def watch(
        self,
        task_id: str,
        kind: Hashable,
        submitted_ago_s: float = 0.0,
        poll_now: bool = False,
        job_id: str = "",
    ) -> asyncio.Future[TaskStatus]:
        """Start watching a task (of job ``job_id``) submitted ``submitted_ago_s`` seconds
        ago; with ``poll_now``, ask about it at once (a task left in flight by an earlier
        run)."""
        now = time.monotonic()
        started = now - submitted_ago_s
        sample = Sample(started)
        if not self.callbacks:
            sample.seen_running = 0.0  # known running only when a poll says so
        w = _Watch(
            task_id,
            kind,
            started,
            asyncio.get_running_loop().create_future(),
            sample,
            # polling.timeout is what THIS run waits, counted from now: a task left by an
            # earlier run is polled again however old it is (it stays live in the ledger).
            deadline=now + self.timeout_s,
            threshold=self.MIN_GAIN * random.uniform(1 - self.jitter, 1 + self.jitter),
            last_poll=started,
            job_id=job_id,
        )
        self.model.started(kind, sample)
        first = self._first_age(kind)
        if not self.callbacks and random.random() >= max(self.SCOUT_SHARE, 10 / (1 + self.live)):
            first *= 2  # not a scout
        w.next_at = now if poll_now else started + self._jittered(first)
        self._watches[task_id] = w
        return w.future

    def job_of(self, task_id: str) -> str | None:
        """The job of a task still waited on (not yet resolved, forgotten or failed)."""
        w = self._watches.get(task_id)
        return w.job_id if w is not None else None

    def knows(self, task_id: str) -> bool:
        """Waited on now, or ended recently (a late duplicate webhook is no stranger)."""
        return task_id in self._watches or task_id in self._ended

    def forget(self, task_id: str) -> None:
        """Stop watching (the job was cancelled)."""
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

    def _first_age(self, kind: Hashable) -> float:
        """Recipe and callback modes: how old a task should be when first polled."""
        if self.callbacks:
            # One early look where most tasks are done (a dropped webhook then costs a
            # few seconds, not the whole tail); then the overdue mark.
            early = self.model.quantile(kind, self.CALLBACK_EARLY_QUANTILE)
            return early if early is not None else self._overdue_age(kind)
        return self.initial_delay_s

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

    def _next_at(self, w: _Watch, now: float) -> float:
        """Recipe and callback modes: when to poll a task found still running."""
        age = now - w.submitted
        if self.callbacks:
            overdue = self._overdue_age(w.kind)
            if overdue > age:
                return now + self._jittered(overdue - age)
            # The webhook may still come: back off, but keep checking.
            backoff = min(self.interval_s * 2 ** (w.polls - 1), 10 * self.interval_s)
            return now + self._jittered(backoff)
        return now + self._jittered(self.interval_s)

    def gain(self, w: _Watch, now: float) -> float:
        """What polling this task now is worth: the probability that it finished since
        its last poll (poll mode, once completion times are known); otherwise 1 once the
        recipe's (or the webhook's) due time has come, growing with lateness, else 0."""
        if now - w.last_poll < self.interval_s * self.MIN_SPACING and w.polls:
            return 0.0
        value = 0.0
        known = None if self.callbacks else self.model.cdf(w.kind, now - w.submitted)
        if known is not None:
            done_now, longest = known
            before = self.model.cdf(w.kind, w.last_poll - w.submitted)
            done_before = before[0] if before is not None else 0.0
            if done_before < 1.0 - 1e-9:
                value = (done_now - done_before) / (1.0 - done_before)
                value = value if value >= w.threshold * self._thrift else 0.0
            if now - w.submitted <= longest:
                return value  # within what the data covers, it alone decides
            # Older than any completion seen: the recipe's interval is a floor.
            w.next_at = max(w.next_at, w.last_poll + self.interval_s)
            if value:
                return value
        if now < w.next_at:
            return value
        return 1.0 + (now - w.next_at) / max(self.interval_s, 1e-9)

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the allocation loop and the poll workers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for _ in range(self._workers):
                tg.create_task(self._worker())
            await self._allocate()

    def _poll_rate(self, dt: float) -> float:
        """Polls per second the budget leaves after recent submissions."""
        submits = self.client.stats.requests["submit"]
        rate = (submits - self._submits_seen) / dt if dt > 0 else 0.0
        self._submits_seen = submits
        self._submit_rate += (rate - self._submit_rate) * min(1.0, dt)  # ~1 s average
        return max(0.0, self.request_rate * self.BUDGET_SHARE - self._submit_rate)

    async def _allocate(self) -> None:
        """Every tick: fail tasks past their deadline, then hand the budget's polls to
        the tasks where a poll is worth the most."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.TICK_S)
            now = time.monotonic()
            rate = self._poll_rate(now - last)
            last = now
            # Bank budget through quiet spells, as the rate limiter itself does, so that
            # a wave of completions can be met with a burst.
            cap = max(1.0, rate * 2.0, self.request_burst * 0.9)
            self._tokens = min(self._tokens + rate * self.TICK_S, cap)
            candidates: list[tuple[float, _Watch]] = []
            for w in list(self._watches.values()):
                if w.in_flight:
                    continue
                if now >= w.deadline:
                    self._fail(w, PollTimeout(f"task {w.task_id} outlived polling.timeout"))
                    continue
                value = self.gain(w, now)
                if value > 0:
                    candidates.append((value, w))
            room = int(self._tokens)
            # Budget left over at the cap means polls are being held back for nothing:
            # lower the bar; a budget that runs dry raises it back.
            fill = self._tokens / cap
            self._thrift = min(
                1.0, max(self.MIN_THRIFT, self._thrift * (0.98 if fill > 0.9 else 1.02))
            )
            if len(candidates) > room:
                candidates = heapq.nlargest(room, candidates, key=lambda c: c[0])
            for _, w in candidates:
                w.in_flight = True
                self._tokens -= 1
                self._due.put_nowait(w)

    async def _worker(self) -> None:
        while True:
            w = await self._due.get()
            try:
                if not w.future.done() and self._watches.get(w.task_id) is w:
                    await self._poll(w)
            finally:
                w.in_flight = False

    async def _poll(self, w: _Watch) -> None:
        w.polls += 1
        w.last_poll = time.monotonic()
        try:
            status = await self.client.status(w.task_id)
        except ApiError as exc:
            if exc.outcome is Outcome.RETRY:
                # No usable answer within the client's retries (server trouble, an answer
                # that cannot be read): the task may be perfectly good. Keep it live, as
                # if it had not answered, and ask again a little later.
                log.warning("polling %s failed for now: %s", w.task_id, exc)
                w.next_at = time.monotonic() + self._jittered(self.interval_s * 2)
                return
            self._fail(w, exc)  # LOST (the API no longer has it) or PERMANENT: the job
            return
        except Exception as exc:  # fatal or unexpected: the job decides
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
        if w.sample.seen_running is not None:
            w.sample.seen_running = w.last_poll - w.submitted
        w.next_at = self._next_at(w, now)

    def _finish(self, w: _Watch, status: TaskStatus) -> None:
        self._watches.pop(w.task_id, None)
        self._ended[w.task_id] = None
        if len(self._ended) > 100_000:
            del self._ended[next(iter(self._ended))]
        if status.create_ms is not None and status.complete_ms is not None:
            seconds = (status.complete_ms - status.create_ms) / 1000
        else:
            seconds = time.monotonic() - w.submitted
        self.model.finished(w.kind, w.sample, seconds)
        if not w.future.done():
            w.future.set_result(status)

    def _fail(self, w: _Watch, exc: BaseException) -> None:
        self._watches.pop(w.task_id, None)
        if not w.future.done():
            w.future.set_exception(exc)
