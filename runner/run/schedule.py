"""The polling schedule: when each task being waited on is worth a poll.

The worth of polling a task now (:meth:`Schedule.gain`) is the probability that it
finished since its last poll, once completion times of its kind are known
(:mod:`runner.run.completion`); a poll must promise at least a bar (:attr:`MIN_GAIN`,
jittered per task) that falls while the request budget goes unused (:attr:`thrift`).
Before anything is known about a kind, a tenth of its tasks scout with the provider's
recipe (``initial_delay``, then every ``interval``, jittered by ``jitter``) while the
others wait at twice the initial delay, keeping the budget for the wave of completions;
a task older than any completion seen falls back to the recipe's interval (a scout; the
others every two intervals).

Callback mode: webhooks resolve tasks; polling is the safety net, with one early look
where 90 % of such tasks are done, and then the overdue mark (99th percentile plus a
margin learned from webhook lag).

Use it or lose it: budget that would otherwise be forfeited (the poller's bank is more
than half full) is spent on :meth:`Schedule.explore`: in poll mode, on tasks of a kind
not known yet, before the recipe's first poll (a wave of fast tasks is found in seconds,
and teaches the estimate), and on the scouts of a kind known only from earlier runs where
those say nothing can have finished yet (today may be faster); in callback mode, on the
tasks likeliest to have finished since they were last looked at (a lost webhook costs
seconds). Once a kind is known in poll mode, unused budget lowers the bar instead
(:meth:`Schedule.relax`). A run can
start warm: completion times of done jobs in the ledger seed the estimate
(:meth:`runner.run.completion.CompletionModel.seed`).

``polling.schedule: fixed`` turns all of this off: every task follows the recipe, under
the same request budget.

Owns: these rules and their constants. Must not know: the request budget's pacing and
the workers (:mod:`runner.run.poller`), HTTP.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from runner.api.answers import TaskStatus
from runner.clock import SYSTEM_CLOCK, Clock

from .completion import CompletionModel, Sample

__all__ = ["Schedule", "Watch"]


@dataclass(slots=True)
class Watch:
    """One task being waited on, and when it is next worth a poll."""

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
    #: poll mode, while its kind is not known: follows the recipe and explores
    scout: bool = True
    #: poll mode: no chance that it finished since its last poll can arise before this
    #: (the estimate's next completion time); the poller skips it until then
    quiet_until: float = 0.0
    seen_unknown: set[str] = field(default_factory=set)
    #: a task an earlier run left in flight (its completion is not this run's first)
    adopted: bool = False


class Schedule:
    """The polling recipe (``initial_delay_s``, ``interval_s``, ``jitter``), what is
    learned of completion times (:attr:`model`) and of webhook lag (:attr:`lags`)."""

    #: a poll is spent only on a task at least this likely to have finished since its
    #: last poll (when the budget is slack; when it binds, the likeliest go first)
    MIN_GAIN = 0.15
    #: the lowest the bar may drop while budget goes unused (MIN_GAIN * this)
    MIN_THRIFT = 0.3
    #: no task is polled more often than every interval * this
    MIN_SPACING = 0.25
    #: poll mode: a task older than this share of its kind's completions, with the next
    #: completion seen more than an interval ahead, follows the recipe's floor
    #: (:meth:`_past_longest`)
    MOST = 0.95
    #: a task with no chance of having finished is weighed again within this many seconds
    #: (the estimate is refreshed meanwhile)
    QUIET_S = 1.0
    #: poll mode, before any completion of a kind is known: the share of tasks that
    #: follow the recipe (scouts); the others wait until the scouts' findings say when
    #: polling pays, keeping the budget for then (they fall back to the recipe at twice
    #: its initial delay if nothing is learned by then)
    SCOUT_SHARE = 0.1
    #: poll mode, a task older than any completion seen: the scouts follow the recipe's
    #: interval, the others this many intervals (nothing says when its kind ends)
    PAST_FACTOR = 2.0
    #: callback mode: the share of tasks expected done when the one early look comes;
    #: about 1 - this share of tasks (plus the dropped webhooks) get polled once
    CALLBACK_EARLY_QUANTILE = 0.9
    #: callback mode, before any completion time is known: overdue at this many
    #: ``initial_delay``s (50 s with the provider's 20 s: past most 2K and many 4K tasks)
    CALLBACK_FALLBACK_FACTOR = 2.5

    def __init__(
        self,
        *,
        initial_delay_s: float,
        interval_s: float,
        jitter: float,
        callbacks: bool,
        adaptive: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.initial_delay_s = initial_delay_s
        self.interval_s = interval_s
        self.jitter = jitter
        #: webhooks are expected: poll only tasks whose webhook is overdue
        self.callbacks = callbacks
        #: False (``polling.schedule: fixed``): the recipe alone, nothing learned
        self.adaptive = adaptive
        self.model = CompletionModel(clock)
        #: seconds from completion to webhook arrival, recent deliveries
        self.lags: deque[float] = deque(maxlen=400)
        #: scales MIN_GAIN: below 1 while the budget goes unused
        self.thrift = 1.0

    def threshold(self) -> float:
        """A new task's bar: the gain a poll must promise before it is spent on it."""
        return self.MIN_GAIN * random.uniform(1 - self.jitter, 1 + self.jitter)

    def first_due(self, w: Watch, live: int) -> float:
        """When task ``w`` is first due (recipe and callback modes), ``live`` tasks being
        watched: scouts at the recipe's age, the others at twice it. Sets ``w.scout``."""
        first = self.first_age(w.kind)
        w.scout = random.random() < max(self.SCOUT_SHARE, 10 / (1 + live))
        if self.adaptive and not self.callbacks and not w.scout:
            first *= 2  # not a scout
        return w.submitted + self.jittered(first)

    def relax(self, fill: float) -> None:
        """Budget left over at the cap (``fill``: the share of it banked) means polls are
        being held back for nothing: lower the bar; a budget that runs dry raises it."""
        self.thrift = min(1.0, max(self.MIN_THRIFT, self.thrift * (0.98 if fill > 0.9 else 1.02)))

    def jittered(self, seconds: float) -> float:
        spread = self.jitter * min(seconds, self.interval_s)
        return max(0.0, seconds + random.uniform(-spread, spread))

    def first_age(self, kind: Hashable) -> float:
        """Recipe and callback modes: how old a task should be when first polled."""
        if self.callbacks:
            # One early look where most tasks are done (a dropped webhook then costs a
            # few seconds, not the whole tail); then the overdue mark.
            early = self._quantile(kind, self.CALLBACK_EARLY_QUANTILE)
            return early if early is not None else self.overdue_age(kind)
        return self.initial_delay_s

    def overdue_age(self, kind: Hashable) -> float:
        """Callback mode: the age after which a missing webhook is overdue. Nearly every
        task of this kind is done by the 99th percentile; the margin covers delivery lag
        (learned from deliveries that did arrive)."""
        late = self._quantile(kind, 0.99)
        if late is None:
            return self.initial_delay_s * self.CALLBACK_FALLBACK_FACTOR
        lags = sorted(self.lags)
        lag = lags[int(0.95 * (len(lags) - 1))] if lags else 0.0
        return late + max(self.interval_s / 2, 3 * lag)

    def _quantile(self, kind: Hashable, p: float) -> float | None:
        return self.model.quantile(kind, p) if self.adaptive else None

    def next_at(self, w: Watch, now: float) -> float:
        """Recipe and callback modes: when to poll a task found still running."""
        age = now - w.submitted
        if self.callbacks:
            overdue = self.overdue_age(w.kind)
            if overdue > age:
                return now + self.jittered(overdue - age)
            # The webhook may still come: back off, but keep checking.
            backoff = min(self.interval_s * 2 ** (w.polls - 1), 10 * self.interval_s)
            return now + self.jittered(backoff)
        return now + self.jittered(self.interval_s)

    def gain(self, w: Watch, now: float) -> float:
        """What polling this task now is worth: the probability that it finished since
        its last poll (poll mode, once completion times are known); otherwise 1 once the
        recipe's (or the webhook's) due time has come, growing with lateness, else 0."""
        if now - w.last_poll < self.interval_s * self.MIN_SPACING and w.polls:
            return 0.0
        value = 0.0
        known = None
        if self.adaptive and not self.callbacks:
            known = self.model.cdf(w.kind, now - w.submitted)
        if known is not None:
            done_now, longest = known
            before = self.model.cdf(w.kind, w.last_poll - w.submitted)
            done_before = before[0] if before is not None else 0.0
            age = now - w.submitted
            if done_now <= done_before and age <= longest:
                # Nothing of the estimate lies between the last poll and now: nothing will
                # before its next completion time (looked at again within QUIET_S). Unless
                # the task is older than most of its kind: one long completion seen must
                # not leave it waiting for that age.
                following = self.model.quantile(w.kind, done_now + 1e-6)
                if following is not None and following - age > self.interval_s:
                    most = self.model.quantile(w.kind, self.MOST)
                    if most is not None and age > most:
                        self._past_longest(w)
                        return 0.0 if now < w.next_at else 1.0
                if following is not None:
                    w.quiet_until = min(w.submitted + following, now + self.QUIET_S)
                return 0.0
            if done_before < 1.0 - 1e-9:
                value = (done_now - done_before) / (1.0 - done_before)
                bar = w.threshold * self.thrift
                if 0.0 < value < bar:
                    # Below the bar: worth more if the bar is far off (the estimate goes
                    # flat ahead, as between the fast and the slow tasks of a kind): a
                    # chance left now would wait that long.
                    ahead = self.model.quantile(w.kind, done_before + bar * (1.0 - done_before))
                    wait = self.interval_s if ahead is None else ahead - (now - w.submitted)
                    value = min(1.0, value * (1.0 + max(0.0, wait) / self.interval_s))
                value = value if value >= bar else 0.0
            if now - w.submitted <= longest:
                return value  # within what the data covers, it alone decides
            self._past_longest(w)
            if value:
                return value
        elif self.adaptive and not self.callbacks:
            # Too few completions to estimate from (a small kind): still, a task older
            # than the longest seen is past what is known.
            longest_seen = self.model.longest(w.kind)
            if longest_seen is not None and now - w.submitted > longest_seen:
                self._past_longest(w)
        if now < w.next_at:
            return value
        return 1.0 + (now - w.next_at) / max(self.interval_s, 1e-9)

    def _past_longest(self, w: Watch) -> None:
        """A task older than any completion seen: the recipe's interval is a floor for a
        scout, :attr:`PAST_FACTOR` intervals for the others (the scouts find where its kind
        ends). A task never polled waited (as a non-scout) only for want of knowledge: it
        is due now."""
        if not w.polls:
            w.next_at = w.last_poll + self.interval_s
            return
        floor = w.last_poll + self.interval_s * (1 if w.scout else self.PAST_FACTOR)
        w.next_at = max(w.next_at, floor)

    def explore(self, w: Watch, now: float) -> float:
        """What a poll of this task is worth when the budget would otherwise be lost: the
        chance that it finished since it was last looked at, with a tie-breaker that
        favours the task looked at least recently (all there is while nothing is known of
        its kind). 0 for a task looked at a moment ago, in ``fixed`` mode, and in poll mode
        once its kind is known (the bar, lowered while budget goes unused, then decides),
        but for a scout where what earlier runs say (a warm start) rules out that it
        finished: every half ``initial_delay`` at most."""
        since = now - w.last_poll
        if not self.adaptive or (w.polls and since < self.interval_s * self.MIN_SPACING):
            return 0.0
        fresh = 1e-3 * since / max(self.initial_delay_s, 1e-9)
        age = now - w.submitted
        known = self.model.cdf(w.kind, age)
        if known is None:
            # Nothing known: scouts look, the oldest first, each at most every interval.
            return fresh * age if w.scout and since >= self.interval_s else 0.0
        done_now, longest = known
        if not self.callbacks:
            # Known from earlier runs only: where that says nothing can have finished yet,
            # scouts still look now and then (today may be faster).
            if not w.scout or since < self.initial_delay_s / 2 or not self.model.seeds(w.kind):
                return 0.0
            before = self.model.cdf(w.kind, w.last_poll - w.submitted)
            return fresh * age if before is not None and done_now <= before[0] else 0.0
        if age > longest:
            return fresh + (1.0 - done_now) * 0.5  # past anything seen: worth a look
        before = self.model.cdf(w.kind, w.last_poll - w.submitted)
        return fresh + done_now - (before[0] if before is not None else 0.0)
