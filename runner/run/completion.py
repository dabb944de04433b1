"""What is learned of completion times: per kind of task, a Kaplan-Meier estimate.

A kind is what sets how long a task takes (:func:`runner.manifest.fields.timing_kind`:
resolution, image count, sequential generation). :class:`CompletionModel` keeps the most
recent submissions of each kind as :class:`Sample` s; tasks still running count as
*censored* ("at least this old"), so an early estimate is not biased towards the fast
tasks that finished first. The poller (:mod:`runner.run.poller`) asks it how likely a task
is to have finished by some age, and where the quantiles lie.

A run starts warm: :meth:`CompletionModel.seed` hands it the exact API timings of done
jobs from the ledger, and the :attr:`CompletionModel.SEEDS` per kind created last count
(not those finished last: an earlier run's last wave's slow tail; nor those created after
a task an earlier run stopped with in flight: only the fast ones of then were seen). They stand
in until the run has seen as many completions of its own, then drop out: a model learned
yesterday is a prior, today's tasks decide. Meanwhile today's tasks still running count
as censored beside them, so a slower day pulls the estimate back at once.

Owns: the estimate. Must not know: polling, the API, the ledger. Time comes from the
clock it is given.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Hashable, Iterable

from runner.clock import SYSTEM_CLOCK, Clock

__all__ = ["CompletionModel", "Sample"]


class Sample:
    """One task as the model sees it: when it started, until when it was last seen
    running, and its duration once known."""

    __slots__ = ("duration", "seen_running", "started")

    def __init__(self, started: float, duration: float | None = None) -> None:
        self.started = started  # monotonic seconds
        self.duration = duration
        #: age at which the task was last known to be running; None: "until now" (a
        #: webhook would have said otherwise)
        self.seen_running: float | None = None


class CompletionModel:
    """Completion times (seconds from submission) per kind of task, estimated with the
    Kaplan-Meier product-limit estimator over the most recent submissions.

    Tasks still running count as *censored*: "at least this old" (the age at which a poll
    last found them running, or their age now where a webhook would tell). Without them the
    early estimate is biased short, since the first tasks to finish are the fast ones: a model
    that had seen only the first 2 % of a wave finish would place its 90th percentile
    where barely 5 % are done. With them, a quantile that the data cannot support yet is
    simply unknown (None), and callers fall back to the configured recipe.
    """

    MIN_SAMPLES = 10
    #: completions from earlier runs kept per kind (the most recent), until the run has
    #: seen as many of its own
    SEEDS = 300
    WINDOW = 2000  # recent submissions per kind (a minute of a full-speed run)
    REFRESH_S = 0.5  # a kind's estimate is recomputed at most this often

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._samples: dict[Hashable, deque[Sample]] = {}
        self._tables: dict[Hashable, tuple[float, list[float], list[float]]] = {}
        self._done: dict[Hashable, int] = {}
        #: per kind, (creation time in unix ms, duration s) of earlier runs' tasks, and
        #: the durations of those that count (:meth:`_seed_durations`)
        self._seeds: dict[Hashable, list[tuple[int, float]]] = {}
        self._counted: dict[Hashable, list[float]] = {}
        self._unfinished: list[int] = []
        #: kinds whose seeds today's completions contradicted
        self._outdated: set[Hashable] = set()
        #: per kind, the longest completion seen (also before there are enough to
        #: estimate from)
        self._longest: dict[Hashable, float] = {}

    def longest(self, kind: Hashable) -> float | None:
        """The longest completion of ``kind`` seen so far (this run's or a seed's)."""
        return self._longest.get(kind)

    def seed(self, kind: Hashable, created_ms: int, completed_ms: int) -> None:
        """A task of ``kind`` done in an earlier run, with its API timings (creation and
        completion, unix ms). Which of them count is decided when first asked
        (:meth:`_seed_durations`)."""
        duration = max((completed_ms - created_ms) / 1000, 1e-3)
        self._seeds.setdefault(kind, []).append((created_ms, duration))
        self._longest[kind] = max(self._longest.get(kind, 0.0), duration)
        self._counted.pop(kind, None)
        self._tables.pop(kind, None)

    def unfinished(self, created_ms: Iterable[int]) -> None:
        """Earlier runs left tasks created at these times unfinished (stopped with them in
        flight, or given up on). Of the tasks created after one of them while it was
        recent, only the fast ones were seen to finish: they do not count
        (:meth:`_seed_durations`)."""
        self._unfinished = sorted(created_ms)
        self._counted.clear()
        self._tables.clear()

    def _seed_durations(self, kind: Hashable) -> list[float]:
        """The durations of the :attr:`SEEDS` earlier tasks of ``kind`` created last.
        Chosen by completion instead, the most recent would be the tail of the earlier
        run's last wave: its slowest tasks. Left out: those created after a task left
        unfinished within the longest duration seen before the last completion (the run
        stopped then; an older unfinished task is a stuck one, and the run went on)."""
        chosen = self._counted.get(kind)
        if chosen is None:
            by_creation = sorted(self._seeds.get(kind, []), key=lambda s: s[0])
            seen = by_creation
            if by_creation and self._unfinished:
                last = max(c + d * 1000 for c, d in by_creation)
                recent = last - max(d for _, d in by_creation) * 1000
                i = bisect.bisect_left(self._unfinished, recent)
                if i < len(self._unfinished):
                    cutoff = self._unfinished[i]
                    seen = [s for s in by_creation if s[0] < cutoff] or by_creation
            chosen = self._counted[kind] = [d for _, d in seen[-self.SEEDS :]]
        return chosen

    def seeds(self, kind: Hashable) -> int:
        """Earlier runs' completions that count now (0 once the run has its own, or once
        its own say that today is faster)."""
        if self._done.get(kind, 0) >= self.SEEDS or kind in self._outdated:
            return 0
        return len(self._seed_durations(kind))

    def started(self, kind: Hashable, sample: Sample) -> None:
        self._samples.setdefault(kind, deque(maxlen=self.WINDOW)).append(sample)

    def finished(self, kind: Hashable, sample: Sample, seconds: float) -> None:
        sample.duration = max(seconds, 1e-3)
        self._done[kind] = self._done.get(kind, 0) + 1
        self._longest[kind] = max(self._longest.get(kind, 0.0), sample.duration)

    def observe(self, kind: Hashable, seconds: float) -> None:
        """A completion of a task that was not followed from its start."""
        sample = Sample(self.clock.monotonic() - seconds)
        self.started(kind, sample)
        self.finished(kind, sample, seconds)

    def _table(self, kind: Hashable) -> tuple[list[float], list[float]] | None:
        """(cumulative probabilities, times) of the estimate, or None if too little is
        known yet."""
        now = self.clock.monotonic()
        cached = self._tables.get(kind)
        if cached is not None and now - cached[0] < self.REFRESH_S:
            return cached[1], cached[2]
        seeds = self.seeds(kind)
        if self._done.get(kind, 0) + seeds < self.MIN_SAMPLES:
            return None
        # (time, 0 for a completion / 1 for a censoring): completions sort first on ties
        events = [
            (s.duration, 0)
            if s.duration is not None
            else (now - s.started if s.seen_running is None else s.seen_running, 1)
            for s in self._samples.get(kind, ())
        ]
        events.sort()
        if seeds:
            durations = sorted(self._seed_durations(kind))
            if self._done.get(kind, 0) >= self.MIN_SAMPLES:
                # Today says otherwise: half of today's tasks were done before the
                # earlier runs' fastest twentieth. Today's tasks alone decide.
                own_probs, own_times = _kaplan_meier(events)
                i = bisect.bisect_right(own_times, durations[len(durations) // 20])
                if i and own_probs[i - 1] > 0.5:
                    self._outdated.add(kind)
                    self._tables[kind] = (now, own_probs, own_times)
                    return own_probs, own_times
            events = list(heapq.merge(events, ((d, 0) for d in durations)))
        probs, times = _kaplan_meier(events)
        self._tables[kind] = (now, probs, times)
        return probs, times

    def quantile(self, kind: Hashable, p: float) -> float | None:
        """The time by which a share ``p`` of such tasks are done; None if unknown."""
        table = self._table(kind)
        if table is None:
            return None
        probs, times = table
        i = bisect.bisect_left(probs, p - 1e-9)
        return times[i] if i < len(times) else None

    def cdf(self, kind: Hashable, t: float) -> tuple[float, float] | None:
        """(the share of such tasks done by age ``t``, the longest completion seen); None
        while too little is known. Past the longest completion the share stays where the
        data left it: a lower bound."""
        table = self._table(kind)
        if table is None or not table[1]:
            return None
        probs, times = table
        i = bisect.bisect_right(times, t)
        return (probs[i - 1] if i else 0.0), times[-1]


def _kaplan_meier(events: list[tuple[float, int]]) -> tuple[list[float], list[float]]:
    """(cumulative probabilities, times) of the product-limit estimate over ``events``:
    sorted (time, 0 for a completion / 1 for a censoring)."""
    at_risk = len(events)
    survival = 1.0
    probs: list[float] = []
    times: list[float] = []
    for t, censored in events:
        if not censored:
            survival *= (at_risk - 1) / at_risk
            probs.append(1.0 - survival)
            times.append(t)
        at_risk -= 1
    return probs, times
