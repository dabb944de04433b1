"""One job's life: the per-job state machine of a run.

What a job needs is read from its ledger record (:meth:`JobFlow.next_step`), as a
:class:`Step`; a job with a step is fed to the run (:mod:`runner.run.feed`), which takes
its places first, and then lives here::

    SUBMIT / RETRY --> submit --+--> wait for the task's end --> settle --+--> DOWNLOAD
                                ^                                         |
    POLL (task alive) ----------|-----------------------------------------+
                                +------------- RESUBMIT ------------------+
    DOWNLOAD (paid images not on disk) ----------------------------------------> download

A task's end settles into :class:`Settled`: a success is downloaded; a failure with a
retryable code is submitted again within ``retry.failed_tasks``; anything else ends the
job for this run. Every step is written to the ledger as it happens (by the submitter,
here, and by the downloader); :class:`Failures` records the failed and counts them for
the closing report.

Owns: the transitions above. Must not know: HTTP (the client and the outcome policy
classify answers), the order jobs start in, the progress display.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from runner.api.answers import TaskState, TaskStatus
from runner.api.outcome import FailClass, classify_fail_code
from runner.clock import Clock
from runner.errors import FatalApiError, LostError, ManifestError, PermanentApiError
from runner.manifest.jobspec import Job
from runner.manifest.settings import ApiSettings
from runner.present.outputs import RunCounters
from runner.state.events import Delivered, Failed, Result, TaskFailed, Timeout
from runner.state.ledger import Ledger
from runner.state.record import JobRecord, Phase

from .budget import ImageBudget
from .download import Downloader
from .poller import Poller, PollTimeout
from .slots import Slots
from .submit import Submitter

__all__ = ["Failures", "JobFlow", "Retention", "Settled", "Step"]

log = logging.getLogger("runner")


class Step(enum.Enum):
    """What a job needs next."""

    SUBMIT = "submit"  # no task alive for this content: submit it
    RETRY = "retry"  # failed or lost, and --retry-failed asks to try afresh
    POLL = "poll"  # its task is alive on the API
    DOWNLOAD = "download"  # its images are paid for and not all on disk

    @property
    def paid(self) -> bool:
        """Work already paid for: every run does it, even one that has stopped spending."""
        return self in (Step.POLL, Step.DOWNLOAD)


class Settled(enum.Enum):
    """What a task's end leads to."""

    DOWNLOAD = "download"  # it succeeded
    RESUBMIT = "resubmit"  # it failed with a retryable code, within retry.failed_tasks
    END = "end"  # nothing more for this job in this run (failed, stopped, refused)


class Failures:
    """Records failed jobs (a ``failed`` event, counted by code) and reports them at the
    end of the run, one line a code."""

    def __init__(self, ledger: Ledger, counters: RunCounters) -> None:
        self.ledger = ledger
        self.counters = counters
        self._by_code: Counter[str] = Counter()  # this run's
        self._retryable = 0

    def fail(self, job: Job, code: str, message: str, retryable: bool) -> None:
        self.ledger.append(job.id, Failed(code, message[:500], retryable))
        self.counters.failed += 1
        self._by_code[code] += 1
        if self._by_code[code] == 1:  # one line a code; the rest are counted
            log.warning(
                "job %s failed: %s %s (further %s failures are counted, not listed)",
                job.id,
                code,
                message,
                code,
            )
        if retryable:
            self._retryable += 1

    def report(self) -> None:
        """The run's failures, one line a code, and what to do about the retryable."""
        for code, n in self._by_code.most_common():
            log.warning("%d job%s failed with %s this run", n, "s" if n != 1 else "", code)
        if self._retryable:
            log.warning(
                "%d of them may succeed if tried again: run the same command with "
                "--retry-failed (--status lists failures by code)",
                self._retryable,
            )


class Retention:
    """How long the API keeps a task and its results (``api.retention``, on the API's
    clock). A 404 for a task younger than that is not the end of it: another key or
    account asked (a rotated key), and the task stays live for a later run."""

    def __init__(self, api: ApiSettings, clock: Clock) -> None:
        self._api = api
        self._kept_s = api.retention_s * api.time_scale
        self._clock = clock

    def keeps(self, rec: JobRecord) -> bool:
        """The job's task is younger than the API keeps tasks."""
        if rec.submitted_t is None:
            return False
        return self._clock.wall() - rec.submitted_t < self._kept_s

    def unknown_task(self, task_id: str, job_id: str) -> str:
        """The warning for a task the API does not know although it should."""
        kept = self._api.retention_s
        days = f"{kept / 86400:g} days" if kept >= 86400 else f"{kept:g} s"
        return (
            f"the API does not know task {task_id} of job {job_id} (404), though it keeps "
            f"tasks for {days}: is {self._api.key_env} the key that submitted it? The task "
            "stays live in the ledger and is polled again by the next run"
        )


class JobFlow:
    """Moves jobs through their life. ``halt`` is told when the API refuses the account
    or says the configuration is wrong (the run stops); ``stopping`` is set once the run
    stops submitting."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        counters: RunCounters,
        failures: Failures,
        submitter: Submitter,
        poller: Poller,
        downloader: Downloader,
        slots: Slots,
        budget: ImageBudget,
        stopping: asyncio.Event,
        halt: Callable[[FatalApiError | ManifestError], None],
        retention: Retention,
        retry_failed: bool,
        failed_tasks: int,
        callbacks: bool,
    ) -> None:
        self.ledger = ledger
        self.counters = counters
        self.failures = failures
        self.submitter = submitter
        self.poller = poller
        self.downloader = downloader
        self.slots = slots
        self.budget = budget
        self._stopping = stopping
        self._halt = halt
        self.retention = retention
        self._retry_failed = retry_failed
        #: resubmissions allowed after retryable task failures (retry.failed_tasks)
        self._failed_tasks = failed_tasks
        self._callbacks = callbacks

    def next_step(self, job: Job, rec: JobRecord | None) -> Step | None:
        """What ``job`` needs, from its record for this content (None: a record of other
        content, or none); None when it needs nothing in this run."""
        if rec is None:
            return Step.SUBMIT
        if rec.phase is Phase.DONE:
            if self.downloader.files_present(rec):
                self.counters.skipped_done += 1
                return None
            self.ledger.index.revive(job.id)  # the downloader works on the full record
            return Step.DOWNLOAD if rec.urls else Step.SUBMIT
        if rec.phase in (Phase.FAILED, Phase.LOST):
            if self._retry_failed and rec.retryable:
                # The last task succeeded and only its download failed: its images are
                # paid for; fetch them again rather than pay twice. A lost job's images
                # are gone: paying again is what --retry-failed asks for.
                billed = rec.task_id is not None and rec.billed_task == rec.task_id
                fetch = billed and rec.urls and rec.phase is Phase.FAILED
                return Step.DOWNLOAD if fetch else Step.RETRY
            self.counters.skipped_failed += 1
            return None
        if rec.phase is Phase.LIVE:
            return Step.POLL
        if rec.phase is Phase.RESULT:
            return Step.DOWNLOAD
        if rec.failed_tasks > self._failed_tasks:
            self.failures.fail(job, rec.fail_code or "FAILED", rec.fail_msg or "", True)
            return None
        return Step.SUBMIT

    async def guard(self, job: Job, work: Awaitable[None], done: Callable[[], None]) -> None:
        """Run one job's coroutine: an error that ends the job is recorded, one that
        refuses the account stops the run; ``done`` runs whatever happens."""
        try:
            await work
        except (FatalApiError, ManifestError) as exc:  # the account, or the configuration
            self._halt(exc)
        except LostError as exc:  # the API no longer has the task
            self.downloader.lost(job, exc.code, str(exc))
        except PermanentApiError as exc:
            self.failures.fail(job, exc.code or f"HTTP_{exc.status}", str(exc), True)
        finally:
            done()

    async def task_job(self, job: Job, task_id: str | None = None, ago_s: float = 0.0) -> None:
        """Holding a task slot: submit (or resume ``task_id``, submitted ``ago_s`` seconds
        ago), wait for the end, resubmit while retryable failures allow; release the slot;
        then download."""
        # The job's images were reserved against the budget when it was admitted (or,
        # resumed, when the ledger was read); the reservation ends with this coroutine.
        try:
            while True:
                if task_id is None:
                    task_id = await self.submitter.submit(job)
                    if task_id is None:
                        return
                    ago_s = 0.0
                status = await self._wait(job, task_id, ago_s)
                settled = Settled.END if status is None else self._settle(job, status)
                if settled is Settled.END:
                    return
                if settled is Settled.DOWNLOAD:
                    break
                task_id = None
        finally:
            self.slots.release()
            self.budget.release(job.max_images)
        await self.downloader.job(job)

    async def _wait(self, job: Job, task_id: str, ago_s: float) -> TaskStatus | None:
        """The task's terminal status; None: it stays live (timeout or stop)."""
        # A task left by an earlier run may have finished while nobody listened for its
        # webhook: in callback mode ask about it at once.
        resumed = ago_s > 0 and self._callbacks
        future = self.poller.watch(task_id, job.timing_kind, ago_s, poll_now=resumed, job_id=job.id)
        try:
            return await future
        except PollTimeout:
            self.ledger.append(job.id, Timeout(task_id))
            self.counters.timed_out += 1
            return None
        except LostError:
            rec = self.ledger.index.get(job.id)
            if rec is None or not self.retention.keeps(rec):
                raise  # older than the API keeps tasks: gone for good
            # A 404 now means another key or account (a rotated key), not a lost task.
            self.ledger.append(job.id, Timeout(task_id))
            self.counters.unknown_tasks += 1
            if self.counters.unknown_tasks == 1:
                log.warning("%s", self.retention.unknown_task(task_id, job.id))
            return None
        except asyncio.CancelledError:
            self.poller.forget(task_id)
            raise

    def _settle(self, job: Job, status: TaskStatus) -> Settled:
        """Record a task's end, and what it leads to."""
        if status.state is TaskState.SUCCESS:
            result = Result(
                status.task_id,
                status.result_urls,
                status.create_ms,
                status.complete_ms,
                status.cost_ms,
            )
            self.ledger.append(job.id, result)
            self.budget.produced(len(status.result_urls))
            return Settled.DOWNLOAD
        fail_class = classify_fail_code(status.fail_code)
        failed = TaskFailed(status.task_id, status.fail_code, status.fail_msg, fail_class.value)
        self.ledger.append(job.id, failed)
        if fail_class is FailClass.FATAL:
            refused = f"the API stopped the account: {status.fail_code}"
            self._halt(FatalApiError(refused, 0, "CREDITS"))
            return Settled.END
        code, message = status.fail_code or "FAILED", status.fail_msg or ""
        if fail_class is FailClass.PERMANENT:
            self.failures.fail(job, code, message, retryable=False)
            return Settled.END
        stopping = self._stopping.is_set()
        if self.ledger.index.records[job.id].failed_tasks > self._failed_tasks or stopping:
            if not stopping:
                self.failures.fail(job, code, message, True)
            return Settled.END
        self.counters.resubmitted += 1
        return Settled.RESUBMIT

    def accept_delivery(self, status: TaskStatus) -> bool:
        """A valid webhook for a task being waited on: record it, then resolve the task.
        False for a duplicate (the task has already ended)."""
        job_id = self.poller.job_of(status.task_id)
        if job_id is None:
            return False
        delivered = Delivered(
            status.task_id,
            status.state.value,
            status.result_urls,
            status.fail_code,
            status.create_ms,
            status.complete_ms,
            status.cost_ms,
        )
        self.ledger.append(job_id, delivered)
        return self.poller.deliver(status)
