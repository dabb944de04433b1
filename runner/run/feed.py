"""The feed: the order jobs start in, and the places each takes before it starts.

Jobs with work already alive on the API go first (their tasks hold slots there right
now), then the rest in manifest order. Done jobs (in the ledger's packed done index, same
content) are walked beside them, also in manifest order, for a look at their images on
disk: a campaign done up to its last thousand jobs submits those at once instead of after
a million such looks. Before a job's coroutine is created it takes, in
this order: a place in the pipeline (tasks and downloads, bounded, so memory follows
the limits and not the manifest's length), its images' room under the budget cap (new
spending only), and a task slot (``limits.concurrency``; not for a download). A job that
cannot have them waits, or, once the run stops spending, is left for the next run.

Once submissions end (a stop, the budget), the feed goes on for paid work only: tasks
alive on the API are polled and finished images downloaded by every run.

Owns: order and admission. Must not know: what happens to a job once started
(:mod:`runner.run.jobs`), HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterable, Iterator, Sequence

from runner.clock import Clock
from runner.manifest.campaign import Campaign
from runner.manifest.shards import id_hash
from runner.present.outputs import RunCounters
from runner.state.events import Reset
from runner.state.ledger import Ledger
from runner.state.record import Phase

from .completion import CompletionModel
from .jobs import JobFlow, Step
from .slots import Slots

__all__ = ["Feeder"]

log = logging.getLogger("runner")

#: the feed lets other tasks run at least once every this many jobs
YIELD_EVERY = 1024
#: the walk over done jobs goes this many jobs at a time (a fraction of a millisecond),
#: then pauses this long while other work is in flight (a sixth of a core at most)
BACKGROUND_STEP = 32
BACKGROUND_PAUSE_S = 0.002


class Feeder:
    """Starts every job that needs something, in the :class:`asyncio.TaskGroup` given to
    :meth:`feed`. ``stopping`` is set once the run stops spending."""

    def __init__(
        self,
        campaign: Campaign,
        ledger: Ledger,
        flow: JobFlow,
        pipeline: Slots,
        stopping: asyncio.Event,
        counters: RunCounters,
        clock: Clock,
    ) -> None:
        self.campaign = campaign
        self.ledger = ledger
        self.flow = flow
        self.pipeline = pipeline
        self._stopping = stopping
        self.counters = counters
        self.clock = clock
        #: false once the budget cap refused a submission: no more are tried
        self._submitting = True

    def passes(self, rows: Sequence[int]) -> Iterator[int]:
        """``rows`` of the campaign's table, those with work already alive on the API
        first, then the rest in manifest order."""
        table = self.campaign.table
        resumable = {
            job_id
            for job_id, rec in self.ledger.index.items()
            if rec.phase in (Phase.LIVE, Phase.RESULT)
        }
        if resumable:
            for row in rows:
                if table.id(row) in resumable:
                    yield row
            for row in rows:
                if table.id(row) not in resumable:
                    yield row
        else:
            yield from rows

    async def feed(self, jobs: asyncio.TaskGroup) -> None:
        """Start every job's work (work already paid for first).

        Two walks, each in manifest order: one over the jobs not done (alive on the API
        first), one beside it over the done jobs, which only checks that their images
        are still on disk (a done job's paths are in its ledger line, read back). So a
        campaign done up to its last jobs submits those at once, while the check of a
        million done jobs goes on; an image found missing is downloaded again (paid
        work) through the same admission."""
        table, index = self.campaign.table, self.ledger.index
        rows = self.campaign.rows()
        self.warm_start()
        done, _, _, rest = index.done_rows(table.idh, table.fp64, rows)
        async with asyncio.TaskGroup() as walks:
            walks.create_task(self._walk(jobs, self.passes(rest)))
            if done:
                walks.create_task(self._walk(jobs, _others(rows, rest), background=True))

    def warm_start(self) -> None:
        """Hand the poller the API timings of the most recently finished tasks in the
        ledger (its last few MB), of jobs the manifest still holds unchanged, so that the
        first wave is polled as well as the steady state; and when the tasks still in
        flight were submitted (an earlier run stopped: of the tasks of then, only the fast
        ones were seen to finish)."""
        timings = self.ledger.recent_timings()
        if not timings:
            log.debug("polling starts cold: no completion times in the ledger")
            return
        table, index = self.campaign.table, self.ledger.index
        self.flow.poller.unfinished(
            int(rec.submitted_t * 1000)
            for _, rec in index.items()
            if rec.phase is Phase.LIVE and rec.submitted_t is not None
        )
        wanted = {id_hash(job): job for job, _, _ in timings}
        rows = {
            wanted[h]: row
            for row, h in enumerate(table.idh)
            if h in wanted and table.id(row) == wanted[h]
        }
        kinds: dict[int, Hashable | None] = {}
        for job_id, created, completed in timings:
            row = rows.get(job_id)
            if row is None:
                continue  # not in this manifest
            if row not in kinds:  # done under the manifest's content: its kind is known
                job, rec = table.job(row), index.records.get(job_id)
                done = index.done_as(job_id, table.fp64[row]) or (
                    rec is not None and rec.phase is Phase.DONE and rec.fp == job.fingerprint
                )
                kinds[row] = job.timing_kind if done else None
            kind = kinds[row]
            if kind is not None:
                self.flow.poller.seed(kind, created, completed)
        counted = {k: self.flow.poller.seeded(k) for k in set(kinds.values()) if k is not None}
        known = [k for k, n in counted.items() if n >= CompletionModel.MIN_SAMPLES]
        if not known:
            log.debug("polling starts cold: too few completion times in the ledger")
            return
        log.debug(
            "polling starts warm: the API timings of %d tasks finished by earlier runs"
            " (%d of this manifest's kinds)",
            sum(counted[k] for k in known),
            len(known),
        )

    async def _walk(
        self, jobs: asyncio.TaskGroup, rows: Iterable[int], background: bool = False
    ) -> None:
        """Start the work of ``rows``. In the ``background`` (the done jobs' walk), a
        short step at a time, with a pause after each while other work is in flight:
        a look at a million done jobs must not slow the submissions and polls (nor the
        machine's other processes) that go on beside it."""
        flow, index = self.flow, self.ledger.index
        table = self.campaign.table
        every = BACKGROUND_STEP if background else YIELD_EVERY
        for n, row in enumerate(rows, 1):
            if not n % every:
                busy = background and self.pipeline.used
                await asyncio.sleep(BACKGROUND_PAUSE_S if busy else 0)
            job_id = table.id(row)
            # A done job's record is read from its ledger line only to check its files.
            rec = index.get(job_id)
            if (
                rec is not None
                and rec.phase is Phase.DONE
                and index.done_as(job_id, table.fp64[row])
                and flow.downloader.files_present(rec)
            ):
                # What next_step says of it, without making the job whole again.
                self.counters.skipped_done += 1
                continue
            job = table.job(row)
            if rec is not None and rec.fp != job.fingerprint:
                # The content changed under this id: it runs again, but a task of the
                # earlier content alive on the API is paid work: it is finished first
                # (polled, its images downloaded) and the new content goes next run.
                if rec.phase not in (Phase.LIVE, Phase.RESULT):
                    rec = None
                else:
                    self.counters.changed_in_flight += 1
            step = flow.next_step(job, rec)
            if step is None:
                continue
            stopping = self._stopping.is_set()
            if not step.paid and (stopping or not self._submitting):
                self.counters.budget_refused += not self._submitting
                continue  # no new spending; keep looking for paid work
            # After a stop the slots are closed to submissions; paid work takes its place
            # without waiting (a task alive on the API holds a slot there already).
            if (step.paid and stopping) or not await self.pipeline.acquire():
                if not step.paid:
                    continue
                self.pipeline.take()
            if step is Step.DOWNLOAD:
                jobs.create_task(flow.guard(job, flow.downloader.job(job), self.pipeline.release))
                continue
            if step is not Step.POLL and not await flow.budget.admit(
                job.max_images, self._stopping
            ):
                self.pipeline.release()
                if flow.budget.exhausted:
                    self.counters.budget_stopped = True
                    self.counters.budget_refused += 1
                    self._submitting = False
                    log.warning(
                        "budget reached: %d images paid or reserved; submitting no more",
                        flow.budget.spent + flow.budget.reserved,
                    )
                continue
            if step is Step.POLL:
                if self._stopping.is_set() or not await flow.slots.acquire():
                    flow.slots.take()
            elif not await flow.slots.acquire():
                self.pipeline.release()
                flow.budget.release(job.max_images)
                continue
            if step is Step.RETRY:
                self.ledger.append(job.id, Reset())  # --retry-failed: afresh
            if step is Step.POLL:
                live = index.records[job.id]
                now = self.clock.wall()
                ago_s = max(0.0, now - (live.submitted_t or now))
                work = flow.task_job(job, live.task_id, ago_s)
            else:
                work = flow.task_job(job)
            jobs.create_task(flow.guard(job, work, self.pipeline.release))


def _others(rows: Sequence[int], rest: Sequence[int]) -> Iterator[int]:
    """``rows`` (ascending) but those in ``rest`` (a subsequence of them)."""
    i, n = 0, len(rest)
    for row in rows:
        if i < n and rest[i] == row:
            i += 1
        else:
            yield row
