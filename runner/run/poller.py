"""The poller: one allocation loop for every task being waited on, a few workers to poll.

A job that has a task calls :meth:`Poller.watch` and awaits the returned future; the
poller decides when to ask the API about that task and resolves the future with the
terminal :class:`~runner.api.answers.TaskStatus`. No coroutine sleeps per task: one
loop wakes every :attr:`Poller.TICK_S` of the clock and hands the chosen tasks to a
small pool of workers. Webhooks resolve tasks too, through :meth:`Poller.deliver`.

Pacing: each tick, the polls the request budget leaves after submissions
(``request_rate`` x :attr:`Poller.BUDGET_SHARE`, for the time that really passed since
the last tick, banked through quiet spells, deeper when the estimate expects a wave of
completions soon (before the run's first completion, a warm run's first wave: the
budget of the 25 s before it could finish), never forfeited when that wave has passed,
handed out over :attr:`Poller.RELEASE_S` and never more than the request window has
room for) go to the tasks where a poll is worth the most
(:mod:`runner.run.schedule` says what each is worth). Polls that the bank would forfeit
(it is more than :attr:`Poller.KEEP` full) are spent exploring: on the tasks likeliest
to have finished since they were last looked at, whatever the bar. A task with no chance
yet of having finished is skipped until the estimate's next completion time.

Owns: the watch list, the pacing and the workers. Must not know: when a task is worth
a poll (the schedule), the ledger, the jobs.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Hashable, Iterable

from runner.api.answers import TaskStatus
from runner.api.client import ApiClient
from runner.api.outcome import Outcome
from runner.clock import SYSTEM_CLOCK, Clock
from runner.errors import ApiError
from runner.manifest.settings import Polling

from .completion import Sample
from .schedule import Schedule, Watch

__all__ = ["PollTimeout", "Poller"]

log = logging.getLogger("runner.poll")


class PollTimeout(Exception):
    """The task outlived ``polling.timeout`` in this run; it stays live on the API."""


class Poller:
    """Polls every watched task when it is worth it and resolves its future."""

    TICK_S = 0.1
    #: share of the sustained request rate that submissions and polls together may use;
    #: the rest absorbs retries
    BUDGET_SHARE = 0.97
    #: share of the bank kept for a wave of completions; polls beyond it would be
    #: forfeited at the cap, so they explore
    KEEP = 0.5
    #: exploring is decided every this many ticks (it weighs every watched task)
    EXPLORE_EVERY = 3
    #: the completions expected soon are counted every this many ticks
    DEMAND_EVERY = 10
    #: polls a task on average, over the run, beyond which budget left over is no longer
    #: spent below the bar (a lowered bar, exploring): with its submission, a job's share
    #: of the API's 10,000 requests a minute at 1,000 slots (5 a job) is not exceeded
    SPARE_POLLS_PER_TASK = 4.0
    #: callback mode: webhooks bring the results; spare polls look for lost webhooks,
    #: within this many a task on average, so a run stays near one request a task
    CALLBACK_SPARE_POLLS_PER_TASK = 0.5
    #: the bank may hold this many polls for each completion expected within
    #: :attr:`DEMAND_S` (a warm run's first wave: budget left while nothing could
    #: finish is spent when the wave comes); otherwise a couple of seconds of polls
    BANK_PER_COMPLETION = 3.0
    DEMAND_S = 12.0
    #: before the run's first completion: the bank may hold this many polls for each
    #: completion expected within :attr:`FIRST_WAVE_S` (a warm run's first wave comes
    #: 25 s after its start: the budget of the seconds before it is spent on it)
    FIRST_WAVE_BANK_PER_COMPLETION = 4.0
    FIRST_WAVE_S = 20.0
    #: the bank is handed out over about this many seconds, not in one tick: the first
    #: tasks of a wave to cross the bar would otherwise take it all, early
    RELEASE_S = 4.0

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
        window_room: Callable[[], int] | None = None,
        adaptive: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.client = client
        self.clock = clock
        self.timeout_s = timeout_s
        self.schedule = Schedule(
            initial_delay_s=initial_delay_s,
            interval_s=interval_s,
            jitter=jitter,
            callbacks=callbacks,
            adaptive=adaptive,
            clock=clock,
        )
        #: polls the request window has room for now (the gate's count); None: no limit
        self._window_room = window_room
        #: API requests per second the run may spend (submissions and polls together),
        #: and the burst the rate limiter allows after a quiet spell
        self.request_rate = request_rate
        self.request_burst = request_burst
        self._workers = workers
        self._watches: dict[str, Watch] = {}
        self._ended: dict[str, None] = {}  # recently ended task ids, oldest first
        self._due: asyncio.Queue[Watch] = asyncio.Queue()
        self._tokens = 0.0
        self._ticks = 0
        self._demand = 0.0  # polls the bank may hold for completions soon (once a second)
        self._own_finished = 0  # tasks this run created (not adopted) that finished
        self._watched = 0  # tasks watched in this run
        self._polls = 0  # polls handed out in this run
        self._submits_seen = 0
        self._submit_rate = 0.0  # recent submissions per second (moving average)
        self.resolved_by_poll = 0
        self.resolved_by_webhook = 0

    @classmethod
    def for_campaign(
        cls,
        client: ApiClient,
        polling: Polling,
        *,
        time_scale: float,
        callbacks: bool,
        workers: int,
    ) -> Poller:
        """The poller of a run: the manifest's recipe on the API's clock (``time_scale``:
        how fast it runs, see :attr:`runner.manifest.settings.ApiSettings.time_scale`),
        spending what the client's request gate sustains, on the client's clock."""
        return cls(
            client,
            initial_delay_s=polling.initial_delay_s * time_scale,
            interval_s=polling.interval_s * time_scale,
            jitter=polling.jitter,
            # Not scaled: the request budget is not, so on a fast simulator a big
            # campaign's tasks wait for polls as long as on the API.
            timeout_s=polling.timeout_s,
            callbacks=callbacks,
            request_rate=client.gate.sustained_per_s,
            request_burst=client.gate.burst,
            window_room=client.gate.room,
            adaptive=polling.schedule == "adaptive",
            workers=workers,
            clock=client.clock,
        )

    @property
    def live(self) -> int:
        return len(self._watches)

    def overdue(self) -> int:
        """Callback mode: watched tasks older than their kind's overdue mark (their webhook
        is late); 0 in poll mode."""
        if not self.schedule.callbacks:
            return 0
        now = self.clock.monotonic()
        marks: dict[Hashable, float] = {}
        count = 0
        for w in self._watches.values():
            mark = marks.get(w.kind)
            if mark is None:
                mark = marks[w.kind] = self.schedule.overdue_age(w.kind)
            count += now - w.submitted > mark
        return count

    def first_poll_in(self) -> float | None:
        """Seconds until the soonest poll is due (None when nothing is watched)."""
        if not self._watches:
            return None
        return max(0.0, min(w.next_at for w in self._watches.values()) - self.clock.monotonic())

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
        now = self.clock.monotonic()
        started = now - submitted_ago_s
        schedule = self.schedule
        sample = Sample(started)
        if not schedule.callbacks:
            sample.seen_running = 0.0  # known running only when a poll says so
        w = Watch(
            task_id,
            kind,
            started,
            asyncio.get_running_loop().create_future(),
            sample,
            # polling.timeout is what THIS run waits, counted from now: a task left by an
            # earlier run is polled again however old it is (it stays live in the ledger).
            deadline=now + self.timeout_s,
            threshold=schedule.threshold(),
            last_poll=started,
            job_id=job_id,
            adopted=poll_now,
        )
        schedule.model.started(kind, sample)
        self._watched += 1
        w.next_at = now if poll_now else schedule.first_due(w, self.live)
        self._watches[task_id] = w
        return w.future

    def seed(self, kind: Hashable, create_ms: int | None, complete_ms: int | None) -> None:
        """A task of ``kind`` done in an earlier run, with its API timings: the completion
        model starts from the last created such (a warm start)."""
        if create_ms is not None and complete_ms is not None and complete_ms > create_ms:
            self.schedule.model.seed(kind, create_ms, complete_ms)

    def unfinished(self, created_ms: Iterable[int]) -> None:
        """Earlier runs left tasks created at these times unfinished: seeds created since
        may not count (:meth:`runner.run.completion.CompletionModel.unfinished`)."""
        self.schedule.model.unfinished(created_ms)

    def seeded(self, kind: Hashable) -> int:
        """Earlier runs' completions of ``kind`` that count now."""
        return self.schedule.model.seeds(kind)

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
            self.schedule.lags.append(max(0.0, self.clock.wall() - status.complete_ms / 1000))
        self.resolved_by_webhook += 1
        self._finish(w, status)
        return True

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
        """Every :attr:`TICK_S` of the clock, one :meth:`tick` for the time that passed."""
        last = self.clock.monotonic()
        while True:
            await self.clock.sleep(self.TICK_S)
            now = self.clock.monotonic()
            self.tick(now, now - last)
            last = now

    def tick(self, now: float, elapsed_s: float) -> None:
        """Accrue the polls the budget allows for ``elapsed_s`` seconds (the time that
        really passed: a late tick gets a late tick's polls), fail tasks past their
        deadline, then hand the polls to the tasks where a poll is worth the most, and
        what the bank would forfeit to exploring."""
        rate = self._poll_rate(elapsed_s)
        # Bank budget through quiet spells, as the rate limiter itself does, so that a
        # wave of completions can be met with a burst: deeper when a wave is expected.
        if self._ticks % self.DEMAND_EVERY == 0:
            self._demand = self._bank_demand(now)
        cap = max(1.0, rate * 2.0, self.request_burst * 0.9, self._demand)
        # A bank above a cap that fell is spent (over RELEASE_S), not forfeited.
        self._tokens = min(self._tokens + rate * max(0.0, elapsed_s), max(cap, self._tokens))
        # handed out over RELEASE_S, beside what the rate gives
        step = max(0.0, elapsed_s)
        room = min(int(self._tokens), int((rate + self._tokens / self.RELEASE_S) * step) + 1)
        if self._window_room is not None:
            room = min(room, self._window_room())
        self._ticks += 1
        schedule = self.schedule
        # Budget left over is spent below the bar while the run's polls stay within
        # their average share per task.
        spare = (
            self.CALLBACK_SPARE_POLLS_PER_TASK if schedule.callbacks else self.SPARE_POLLS_PER_TASK
        )
        spare_ok = self._polls < spare * self._watched
        explore = (
            spare_ok
            and schedule.adaptive
            and self._ticks % self.EXPLORE_EVERY == 0
            and self._tokens > cap * self.KEEP
        )
        candidates: list[tuple[float, Watch]] = []
        rest: list[Watch] = []
        gain = schedule.gain
        for w in list(self._watches.values()):
            if w.in_flight:
                continue
            if now >= w.deadline:
                self._fail(w, PollTimeout(f"task {w.task_id} outlived polling.timeout"))
                continue
            if now < w.quiet_until and not (explore and w.scout):
                continue
            value = gain(w, now)
            if value > 0:
                candidates.append((value, w))
            elif explore:
                rest.append(w)
        # the bar follows the unused budget
        schedule.relax(self._tokens / cap if spare_ok else 0.0)
        if len(candidates) > room:
            candidates = heapq.nlargest(room, candidates, key=lambda c: c[0])
        self._send(candidates)
        if explore:
            # What the bank holds beyond its keep would be lost at the cap: explore.
            spare = min(room - len(candidates), int(self._tokens - cap * self.KEEP))
            if spare > 0 and rest:
                scored = [(v, w) for w in rest if (v := schedule.explore(w, now)) > 0]
                self._send(heapq.nlargest(spare, scored, key=lambda c: c[0]))

    def _bank_demand(self, now: float) -> float:
        """The polls the bank may hold for the completions expected soon: within
        :attr:`DEMAND_S`, or, before the first completion of a task this run created
        (those an earlier run left in flight do not count), within
        :attr:`FIRST_WAVE_S` (a warm run's first wave, whose budget would otherwise be
        forfeited while nothing could finish)."""
        if self._own_finished:
            return self.BANK_PER_COMPLETION * self._expected_completions(now, self.DEMAND_S)
        expected = self._expected_completions(now, self.FIRST_WAVE_S)
        return self.FIRST_WAVE_BANK_PER_COMPLETION * expected

    def _expected_completions(self, now: float, horizon_s: float) -> float:
        """How many watched tasks are expected to finish within ``horizon_s`` (those of
        kinds with an estimate)."""
        cdf = self.schedule.model.cdf
        total = 0.0
        for w in self._watches.values():
            age = now - w.submitted
            done = cdf(w.kind, age)
            if done is not None and done[0] < 1.0:
                later = cdf(w.kind, age + horizon_s)
                total += ((later[0] if later else 1.0) - done[0]) / (1.0 - done[0])
        return total

    def _send(self, chosen: list[tuple[float, Watch]]) -> None:
        self._polls += len(chosen)
        for _, w in chosen:
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

    async def _poll(self, w: Watch) -> None:
        w.polls += 1
        w.last_poll = self.clock.monotonic()
        try:
            status = await self.client.status(w.task_id)
        except ApiError as exc:
            if exc.outcome is Outcome.RETRY:
                # No usable answer within the client's retries (server trouble, an answer
                # that cannot be read): the task may be perfectly good. Keep it live, as
                # if it had not answered, and ask again a little later.
                log.warning("polling %s failed for now: %s", w.task_id, exc)
                again = self.schedule.jittered(self.schedule.interval_s * 2)
                w.next_at = self.clock.monotonic() + again
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
        now = self.clock.monotonic()
        if w.sample.seen_running is not None:
            w.sample.seen_running = w.last_poll - w.submitted
        w.next_at = self.schedule.next_at(w, now)

    def _finish(self, w: Watch, status: TaskStatus) -> None:
        self._watches.pop(w.task_id, None)
        self._own_finished += not w.adopted
        self._ended[w.task_id] = None
        if len(self._ended) > 100_000:
            del self._ended[next(iter(self._ended))]
        if status.create_ms is not None and status.complete_ms is not None:
            seconds = (status.complete_ms - status.create_ms) / 1000
        else:
            seconds = self.clock.monotonic() - w.submitted
        self.schedule.model.finished(w.kind, w.sample, seconds)
        if not w.future.done():
            w.future.set_result(status)

    def _fail(self, w: Watch, exc: BaseException) -> None:
        self._watches.pop(w.task_id, None)
        if not w.future.done():
            w.future.set_exception(exc)
