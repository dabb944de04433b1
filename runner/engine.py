"""The engine: wires manifest, ledger, client, scheduler and downloads into one run.

One job's life, each step written to the ledger as it happens::

    take a slot -> write ``submit`` -> POST -> write ``task`` -> poll until terminal
    -> release the slot -> write ``result`` -> download each image -> write ``done``

Structure: one TaskGroup owns the poller, the ledger syncer and the job feeder; the
feeder takes a task slot (and a pipeline place) *before* it creates a job's task, so
memory follows the concurrency limit, not the manifest's length.

Stopping (first SIGINT/SIGTERM, ``--deadline``, a fatal answer): no new submission
starts, every submission already on the wire is allowed to land in the ledger, then the
work already paid for (tasks alive on the API, images to download) goes on for up to
``--drain`` seconds; what is left is then cancelled. Tasks alive on the API stay in the
ledger as ``live`` and are polled again by the next run, however old; partial downloads
are resumed. So a graceful stop leaves zero uncertain submissions, and parks only what
could not finish within the drain. The budget cap stops submissions only: everything in
flight finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from .budget import ImageBudget
from .callback import SILENCE_S, CallbackReceiver, load_secret
from .client import ApiClient, FailClass, TaskState, TaskStatus, classify_fail_code
from .download import Downloader
from .errors import FatalApiError, LostError, ManifestError, PermanentApiError
from .ledger import JobRecord, Ledger, Phase
from .limits import RequestBudget, Slots
from .lock import FolderLock
from .manifest import Campaign, Job
from .outputs import LedgerView, RunCounters, ledger_view, write_results, write_summary
from .progress import ProgressReporter, Snapshot
from .report import write_report
from .scheduler import Poller, PollTimeout
from .shard import adopt_other_layouts, paid_elsewhere
from .submit import Submitter

__all__ = ["Engine", "RunOptions"]

log = logging.getLogger("runner")

#: where the embedded simulator keeps its tasks, inside the output folder
SIM_STATE_DIR = ".simulator"
#: which kind of API the folder's work was done on: "embedded" or "api"
API_KIND_FILE = ".api-kind"


@dataclass(frozen=True, slots=True)
class RunOptions:
    api_key: str = ""
    deadline_s: float | None = None
    #: after a stop, seconds to keep polling and downloading work already paid for
    drain_s: float = 120.0
    retry_failed: bool = False
    progress_every_s: float = 10.0


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g} days" if seconds >= 86400 else f"{seconds:g} s"


class _Stop(Exception):
    """Raised inside the job TaskGroup to cancel what is left once a stop has settled."""


class Engine:
    """One run over one campaign. Not reusable."""

    def __init__(self, campaign: Campaign, options: RunOptions) -> None:
        self.campaign = campaign
        self.options = options
        self.out = campaign.output.dir
        self.ledger = Ledger(self.out)
        self.counters = RunCounters()
        self.stop_reason: str | None = None
        self.fatal: FatalApiError | None = None
        self.config_error: ManifestError | None = None
        #: what the run wrote to summary.json (None until it has)
        self.summary: dict[str, Any] | None = None
        self._stopping = asyncio.Event()
        limits = campaign.limits
        self.slots = Slots(limits.concurrency)
        self._pipeline = Slots(limits.concurrency + max(64, 4 * limits.downloads))
        self._downloads = asyncio.Semaphore(limits.downloads)
        self.budget = ImageBudget(campaign.budget)  # replaced once the ledger is read
        self._client: ApiClient | None = None
        self._submitter: Submitter | None = None
        self._downloader: Downloader
        self._receiver: CallbackReceiver | None = None
        self._poller: Poller | None = None
        self._failures: Counter[str] = Counter()  # this run's, by code
        self._retryable_failures = 0

    # -- public --------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop submitting; let submissions on the wire land; then park everything."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.warning("stopping (%s): no new submissions; run again to continue", reason)
        self._stopping.set()
        self.budget.wake()
        # Waiters for a slot would submit: let them go. Paid work found later in the
        # feed takes its slot without waiting (see _feed).
        self.slots.close()
        self._pipeline.close()

    async def run(self) -> int:
        """Run to completion or to a stop; return the exit code."""
        started = time.monotonic()
        lock = FolderLock(self.out)
        lock.acquire()
        try:
            self.ledger.open()
            self._check_api_kind()
            adopt_other_layouts(self.campaign, self.ledger, self.options.retry_failed)
            report = self.ledger.report
            if report.torn_tail:
                log.info("ledger: the last line was cut short by a kill; it is ignored")
            if report.corrupt:
                log.warning(
                    "ledger: %d unreadable lines skipped (not written by runner, or the "
                    "disk damaged them); the jobs they described may run again",
                    report.corrupt,
                )
            async with self._api() as client:
                self._client = client
                self._downloader = Downloader(
                    client,
                    self.ledger,
                    self.campaign,
                    self.counters,
                    fail=self._fail,
                    backoff_s=0.5 * self._time_scale,
                    still_kept=self._still_kept,
                )
                self._submitter = Submitter(
                    client,
                    self.ledger,
                    self.counters,
                    provider=self.campaign.api.provider,
                    callback_url=self._receiver.callback_url if self._receiver else None,
                    fail=self._fail,
                    stopping=self._stopping,
                    retry=self.campaign.retry,
                    maybe_paid=lambda images: self.budget.maybe_paid(images),
                )
                self._submitter.recover_uncertain()
                await self._run_jobs(client)
            view = ledger_view(self.campaign, self.ledger.state)
            code = self._exit_code(view)
            self._report_failures()
            self._report_uncertain()
            if self.counters.remaining and code == 4:
                log.warning(
                    "%d jobs remain (%s); run the same command again to continue",
                    self.counters.remaining,
                    "; ".join(self._why_remaining()),
                )
            self.counters.wall_time_s = time.monotonic() - started
            write_results(self.campaign, self.ledger.state)
            summary = write_summary(self.campaign, view, self.counters, client.stats, code)
            self.summary = summary
            write_report(self.campaign, self.ledger.state, summary)
            return code
        finally:
            self.ledger.close()
            lock.release()

    # -- set-up --------------------------------------------------------------------------

    def _check_api_kind(self) -> None:
        """One output folder, one kind of API: images of the built-in simulator must never
        count as paid work of the real API (or the reverse). The first run records which
        it used; a later run with the other kind is exit 2."""
        marker = self.out / API_KIND_FILE
        kind = "embedded" if self.campaign.api.embedded else "api"
        try:
            recorded = marker.read_text().strip()
        except FileNotFoundError:
            if self.ledger.state:  # a folder from before the marker: take it as it is
                return
            marker.write_text(kind + "\n")
            return
        if recorded in ("embedded", "api") and recorded != kind:
            what = {"embedded": "the built-in simulator", "api": "a real API"}
            raise ManifestError(
                f"this output folder holds work done on {what[recorded]}, and this run "
                f"would use {what[kind]}: its images would count as the other's. Use "
                "another output.dir for this run (or delete the folder to start over)",
                str(self.out),
            )

    @contextlib.asynccontextmanager
    async def _api(self) -> AsyncIterator[ApiClient]:
        api, limits = self.campaign.api, self.campaign.limits
        # A burst as large as the slots lets a fresh run fill them all at once.
        budget = RequestBudget(limits.rate, limits.rate_period_s, burst=limits.concurrency)
        async with contextlib.AsyncExitStack() as stack:
            base_url, key = api.base_url, self.options.api_key
            if api.embedded:
                from .sim import SimConfig, SimServer

                # Its tasks, timings and files outlive this process (kept in the output
                # folder), so a kill, a deleted image or a deadline resume as on the API.
                sim = SimServer(
                    SimConfig(
                        time_scale=api.sim_time_scale,
                        rate=limits.rate,
                        rate_period_s=limits.rate_period_s,
                    ),
                    host="127.0.0.1",
                    port=0,
                    state_dir=self.out / SIM_STATE_DIR,
                )
                await stack.enter_async_context(sim)
                base_url, key = sim.base_url, "embedded"
            client = ApiClient(
                base_url,
                key,
                api.model,
                budget,
                attempts=self.campaign.retry.attempts,
                request_timeout_s=self.campaign.retry.request_timeout_s,
                connections=limits.concurrency + limits.downloads + 16,
            )
            client.halt = self._stopping
            await stack.enter_async_context(client)
            if api.mode == "callback":
                self._receiver = CallbackReceiver(
                    api.callback_listen,
                    api.callback_public_url,
                    load_secret(self.out),
                    known=lambda task_id: self._poller is not None and self._poller.knows(task_id),
                    accept=self._accept_delivery,
                )
                await stack.enter_async_context(self._receiver)
                await self._receiver.prove_public_url()  # exit 2 before any submission
            yield client

    @property
    def _time_scale(self) -> float:
        api = self.campaign.api
        return api.sim_time_scale if api.embedded else 1.0

    # -- the run -------------------------------------------------------------------------

    async def _run_jobs(self, client: ApiClient) -> None:
        p = self.campaign.polling
        scale = self._time_scale
        self._poller = poller = Poller(
            client,
            initial_delay_s=p.initial_delay_s * scale,
            interval_s=p.interval_s * scale,
            jitter=p.jitter,
            timeout_s=p.timeout_s * scale,
            callbacks=self._receiver is not None,
            request_rate=client.budget.sustained_per_s,
            request_burst=client.budget.burst,
            workers=min(64, self.campaign.limits.concurrency),
        )
        state = self.ledger.state
        paid, uncertain = state.billed_images(), state.uncertain_images()
        b = self.campaign.budget
        if b.max_images is not None or b.max_cost is not None:
            # A cap is the campaign's: what other layouts paid counts too (each shard of
            # the run's own split is its own, running beside it: give each 1/N of the cap).
            elsewhere = paid_elsewhere(self.campaign)
            paid, uncertain = paid + elsewhere[0], uncertain + elsewhere[1]
        self.budget = ImageBudget(
            self.campaign.budget, self.ledger.index.values(), paid=paid, uncertain=uncertain
        )
        loop = asyncio.get_running_loop()
        deadline = None
        if self.options.deadline_s == 0:
            self.request_stop("deadline")  # submit nothing; still collect paid work
        elif self.options.deadline_s is not None:
            deadline = loop.call_later(self.options.deadline_s, self.request_stop, "deadline")
        try:
            async with asyncio.TaskGroup() as background:
                poll_task = background.create_task(poller.run())
                sync_task = background.create_task(self._sync_ledger())
                progress = background.create_task(self._progress())
                extra = []
                if self._receiver is not None:  # one warning if webhooks stop arriving
                    silence = self._receiver.watch_silence(poller.overdue, SILENCE_S * scale)
                    extra.append(background.create_task(silence))
                try:
                    async with asyncio.TaskGroup() as jobs:
                        watcher = jobs.create_task(self._stop_when_settled())
                        await self._feed(jobs)
                        await self._pipeline.wait_idle()
                        watcher.cancel()
                except* _Stop:
                    pass
                for task in (poll_task, sync_task, progress, *extra):
                    task.cancel()
            c = self.counters
            c.polled_results, c.webhook_results = (
                poller.resolved_by_poll,
                poller.resolved_by_webhook,
            )
            if self._receiver is not None:
                c.webhook_duplicates = self._receiver.duplicates
                c.webhook_rejected = self._receiver.rejected
        finally:
            if deadline is not None:
                deadline.cancel()

    async def _stop_when_settled(self) -> None:
        """After a stop request, once no submission is on the wire, drain the work already
        paid for for up to ``drain_s``, then cancel what is left (it stays in the ledger)."""
        await self._stopping.wait()
        if self._submitter is not None:
            await self._submitter.settled()
        if self.options.drain_s > 0:
            log.info(
                "draining: collecting tasks already paid for, for up to %.0f s (--drain)",
                self.options.drain_s,
            )
            await asyncio.sleep(self.options.drain_s)
        raise _Stop

    async def _sync_ledger(self) -> None:
        while True:
            await asyncio.sleep(self.ledger.FSYNC_EVERY_S)
            await asyncio.to_thread(self.ledger.sync)

    async def _progress(self) -> None:
        """The live panel on a terminal, else one concise line per interval."""
        await ProgressReporter(self.snapshot, self.options.progress_every_s).run()

    def snapshot(self) -> Snapshot:
        """The run's live numbers, for the progress display."""
        stats = self._client.stats if self._client is not None else None
        return Snapshot.take(
            self.campaign,
            self.counters,
            live=self.slots.used,
            images_billed=self.budget.spent,
            stats=stats,
            first_poll_in_s=self._poller.first_poll_in() if self._poller else None,
        )

    # -- feeding jobs --------------------------------------------------------------------

    def _passes(self) -> Iterator[Job]:
        """Jobs with work already alive on the API first (their tasks hold slots on the
        API right now), then the rest in manifest order."""
        index = self.ledger.index
        resumable = {
            job_id for job_id, rec in index.items() if rec.phase in (Phase.LIVE, Phase.RESULT)
        }
        if resumable:
            for job in self.campaign.jobs():
                if job.id in resumable:
                    yield job
        for job in self.campaign.jobs():
            if job.id not in resumable:
                yield job

    async def _feed(self, jobs: asyncio.TaskGroup) -> None:
        """Start every job's work in manifest order (work already paid for first). Once
        submissions end (a stop, the budget), the feed goes on for paid work only: tasks
        alive on the API are polled and finished images downloaded by every run."""
        state = self.ledger.state
        submitting = True
        for job in self._passes():
            # A done job's record is read from its ledger line only to check its files.
            rec = state.get(job.id)
            if rec is not None and rec.fp != job.fingerprint:
                # The content changed under this id: it runs again, but a task of the
                # earlier content alive on the API is paid work: it is finished first
                # (polled, its images downloaded) and the new content goes next run.
                if rec.phase not in (Phase.LIVE, Phase.RESULT):
                    rec = None
                else:
                    self.counters.changed_in_flight += 1
            action = self._action(job, rec)
            if action is None:
                continue
            paid = action in ("poll", "download")
            if not paid and (self._stopping.is_set() or not submitting):
                self.counters.budget_refused += not submitting
                continue  # no new spending; keep looking for paid work
            # After a stop the slots are closed to submissions; paid work takes its place
            # without waiting (a task alive on the API holds a slot there already).
            if (paid and self._stopping.is_set()) or not await self._pipeline.acquire():
                if not paid:
                    continue
                self._pipeline.take()
            if action == "download":
                jobs.create_task(self._guard(job, self._downloader.job(job)))
                continue
            if action != "poll" and not await self.budget.admit(job.max_images, self._stopping):
                self._pipeline.release()
                if self.budget.exhausted:
                    self.counters.budget_stopped = True
                    self.counters.budget_refused += 1
                    submitting = False
                    log.warning(
                        "budget reached: %d images paid or reserved; submitting no more",
                        self.budget.spent + self.budget.reserved,
                    )
                continue
            if action == "poll":
                if self._stopping.is_set() or not await self.slots.acquire():
                    self.slots.take()
            elif not await self.slots.acquire():
                self._pipeline.release()
                self.budget.release(job.max_images)
                continue
            if action == "retry":
                self.ledger.append("reset", job.id)  # --retry-failed: afresh
            if action == "poll":
                rec = self.ledger.index[job.id]
                ago = max(0.0, time.time() - (rec.submitted_t or time.time()))
                jobs.create_task(self._guard(job, self._task_job(job, rec.task_id, ago)))
            else:
                jobs.create_task(self._guard(job, self._task_job(job)))

    def _action(self, job: Job, rec: JobRecord | None) -> str | None:
        """What a job needs: submit, retry (a failed job, --retry-failed), poll (its task
        is alive), download (paid images not on disk), or None."""
        if rec is None:
            return "submit"
        if rec.phase is Phase.DONE:
            if self._downloader.files_present(rec):
                self.counters.skipped_done += 1
                return None
            self.ledger.state.revive(job.id)  # the downloader works on the full record
            return "download" if rec.urls else "submit"
        if rec.phase in (Phase.FAILED, Phase.LOST):
            if self.options.retry_failed and rec.retryable:
                # The last task succeeded and only its download failed: its images are
                # paid for; fetch them again rather than pay twice. A lost job's images
                # are gone: paying again is what --retry-failed asks for.
                billed = rec.task_id is not None and rec.billed_task == rec.task_id
                fetch = billed and rec.urls and rec.phase is Phase.FAILED
                return "download" if fetch else "retry"
            self.counters.skipped_failed += 1
            return None
        if rec.phase is Phase.LIVE:
            return "poll"
        if rec.phase is Phase.RESULT:
            return "download"
        if rec.failed_tasks > self.campaign.retry.failed_tasks:
            self._fail(job, rec.fail_code or "FAILED", rec.fail_msg or "", retryable=True)
            return None
        return "submit"

    async def _guard(self, job: Job, work: Any) -> None:
        """Run one job's coroutine; release its pipeline place whatever happens."""
        try:
            await work
        except FatalApiError as exc:
            self._fatal(exc)
        except ManifestError as exc:  # the API says the configuration is wrong
            if self.config_error is None:
                self.config_error = exc
                log.error("%s", exc)
            self.request_stop("the configuration must be fixed")
        except LostError as exc:  # the API no longer has the task
            self._downloader.lost(job, exc.code, str(exc))
        except PermanentApiError as exc:
            self._fail(job, exc.code or f"HTTP_{exc.status}", str(exc), retryable=True)
        finally:
            self._pipeline.release()

    def _fatal(self, exc: FatalApiError) -> None:
        if self.fatal is None:
            self.fatal = exc
            log.error("%s", exc)
        self.request_stop("the API refused the account")

    # -- one job ---------------------------------------------------------------------------

    # -- webhooks --------------------------------------------------------------------------

    def _accept_delivery(self, status: TaskStatus) -> bool:
        """A valid webhook for a task being waited on: record it, then resolve the task.
        False for a duplicate (the task has already ended)."""
        assert self._poller is not None
        job_id = self._poller.job_of(status.task_id)
        if job_id is None:
            return False
        self.ledger.append(
            "delivered",
            job_id,
            task=status.task_id,
            state=status.state.value,
            urls=list(status.result_urls),
            code=status.fail_code,
            create_ms=status.create_ms,
            complete_ms=status.complete_ms,
            cost_ms=status.cost_ms,
        )
        return self._poller.deliver(status)

    def _kind(self, job: Job) -> tuple[Any, ...]:
        inp = job.input
        return (inp.get("resolution", "2K"), job.max_images, inp.get("sequential_image_generation"))

    async def _task_job(self, job: Job, task_id: str | None = None, ago: float = 0.0) -> None:
        """Holding a slot: submit (or resume ``task_id``), poll to the end, resubmit while
        retryable failures allow; release the slot; then download."""
        # The job's images were reserved against the budget when it was admitted (or,
        # resumed, when the ledger was read); the reservation ends with this coroutine.
        try:
            while True:
                if task_id is None:
                    assert self._submitter is not None
                    task_id = await self._submitter.submit(job)
                    if task_id is None:
                        return
                    ago = 0.0
                status = await self._wait(job, task_id, ago)
                if status is None or not self._settle(job, status):
                    return
                if status.state is TaskState.SUCCESS:
                    break
                task_id = None
        finally:
            self.slots.release()
            self.budget.release(job.max_images)
        await self._downloader.job(job)

    async def _wait(self, job: Job, task_id: str, ago: float) -> TaskStatus | None:
        """Wait for the task's terminal status. None: it stays live (timeout or stop)."""
        assert self._poller is not None
        # A task left by an earlier run may have finished while nobody listened for its
        # webhook: in callback mode ask about it at once.
        resumed = ago > 0 and self._receiver is not None
        future = self._poller.watch(task_id, self._kind(job), ago, poll_now=resumed, job_id=job.id)
        try:
            return await future
        except PollTimeout:
            self.ledger.append("timeout", job.id, task=task_id)
            self.counters.timed_out += 1
            return None
        except LostError:
            rec = self.ledger.index.get(job.id)
            if rec is None or not self._still_kept(rec):
                raise  # older than the API keeps tasks: gone for good
            # The API keeps tasks longer than this one has existed: a 404 now means
            # another key or account (a rotated key), not a lost task. It stays live.
            self.ledger.append("timeout", job.id, task=task_id)
            self.counters.unknown_tasks += 1
            if self.counters.unknown_tasks == 1:
                log.warning(
                    "the API does not know task %s of job %s (404), though it keeps tasks "
                    "for %s: is %s the key that submitted it? The task stays live in the "
                    "ledger and is polled again by the next run",
                    task_id,
                    job.id,
                    _days(self.campaign.api.retention_s),
                    self.campaign.api.key_env,
                )
            return None
        except asyncio.CancelledError:
            self._poller.forget(task_id)
            raise

    def _still_kept(self, rec: JobRecord) -> bool:
        """The job's task is younger than the API keeps tasks: a 404 for it is not the
        end of it (the API's retention is scaled with the embedded simulator's time)."""
        if rec.submitted_t is None:
            return False
        kept_s = self.campaign.api.retention_s * self._time_scale
        return time.time() - rec.submitted_t < kept_s

    def _settle(self, job: Job, status: TaskStatus) -> bool:
        """Record a terminal status. True: go on (download, or resubmit a failure)."""
        if status.state is TaskState.SUCCESS:
            self.ledger.append(
                "result",
                job.id,
                task=status.task_id,
                urls=list(status.result_urls),
                create_ms=status.create_ms,
                complete_ms=status.complete_ms,
                cost_ms=status.cost_ms,
            )
            self.budget.produced(len(status.result_urls))
            return True
        fail_class = classify_fail_code(status.fail_code)
        self.ledger.append(
            "task_failed",
            job.id,
            task=status.task_id,
            code=status.fail_code,
            msg=status.fail_msg,
            **{"class": fail_class.value},
        )
        if fail_class is FailClass.FATAL:
            self._fatal(
                FatalApiError(f"the API stopped the account: {status.fail_code}", 0, "CREDITS")
            )
            return False
        rec = self.ledger.index[job.id]
        if fail_class is FailClass.PERMANENT:
            self._fail(job, status.fail_code or "FAILED", status.fail_msg or "", retryable=False)
            return False
        if rec.failed_tasks > self.campaign.retry.failed_tasks or self._stopping.is_set():
            if not self._stopping.is_set():
                self._fail(job, status.fail_code or "FAILED", status.fail_msg or "", True)
            return False
        self.counters.resubmitted += 1
        return True

    def _fail(self, job: Job, code: str, message: str, retryable: bool) -> None:
        self.ledger.append("failed", job.id, code=code, msg=message[:500], retryable=retryable)
        self.counters.failed += 1
        self._failures[code] += 1
        if self._failures[code] == 1:  # one line a code; the rest are counted
            log.warning(
                "job %s failed: %s %s (further %s failures are counted, not listed)",
                job.id,
                code,
                message,
                code,
            )
        if retryable:
            self._retryable_failures += 1

    def _why_remaining(self) -> list[str]:
        """Why jobs are left for the next run, in the operator's words."""
        c = self.counters
        reasons = [self.stop_reason] if self.stop_reason else []
        for n, why in (
            (c.timed_out, "tasks outlived polling.timeout; they stay live"),
            (c.unknown_tasks, "tasks the API does not know under this key; they stay live"),
            (c.slot_waits_expired, "jobs found no free task slot within retry.slot_wait"),
            (c.not_sent, "submissions could not reach the API"),
            (c.uncertain_gave_up, "jobs stopped at retry.uncertain unanswered submissions"),
            (c.download_parked, "downloads failed for now"),
            (c.changed_in_flight, "edited jobs finished their earlier content first"),
        ):
            if n:
                reasons.append(f"{n} {why}")
        return reasons or ["work left for the next run"]

    def _report_uncertain(self) -> None:
        n = self.counters.uncertain
        if n:
            log.warning(
                "%d submissions this run had an unknown outcome (the connection broke, a "
                "5xx or a timeout answered them): each may have been billed, and its job "
                "was sent again or left for the next run; summary.json counts them under "
                "uncertain_submissions",
                n,
            )

    def _report_failures(self) -> None:
        """The run's failures, one line a code, and what to do about the retryable."""
        for code, n in self._failures.most_common():
            log.warning("%d job%s failed with %s this run", n, "s" if n != 1 else "", code)
        if self._retryable_failures:
            log.warning(
                "%d of them may succeed if tried again: run the same command with "
                "--retry-failed (--status lists failures by code)",
                self._retryable_failures,
            )

    # -- the end -------------------------------------------------------------------------

    def _exit_code(self, view: LedgerView) -> int:
        ended = sum(view.states.get(state, 0) for state in ("done", "failed", "lost"))
        self.counters.remaining = view.jobs - ended
        if self.config_error is not None:
            return 2
        if self.fatal is not None:
            return 3
        failed = view.states.get("failed", 0) + view.states.get("lost", 0)
        c = self.counters
        stopped = self.stop_reason is not None or c.timed_out
        if c.budget_refused and not stopped:
            return 6  # the cap refused work (a new job, or a retry): raise it to go on
        if c.remaining:
            return 4
        return 1 if failed else 0
