"""The engine: wires manifest, ledger, client, scheduler and downloads into one run.

One job's life, each step written to the ledger as it happens::

    take a slot -> write ``submit`` -> POST -> write ``task`` -> poll until terminal
    -> release the slot -> write ``result`` -> download each image -> write ``done``

Structure: one TaskGroup owns the poller, the ledger syncer and the job feeder; the
feeder takes a task slot (and a pipeline place) *before* it creates a job's task, so
memory follows the concurrency limit, not the manifest's length.

Stopping (first SIGINT/SIGTERM, ``--deadline``, the budget, a fatal answer): no new
submission starts, every submission already on the wire is allowed to land in the ledger,
then everything else is cancelled. Tasks alive on the API stay in the ledger as ``live``
and are polled again by the next run; partial downloads are resumed. So a graceful stop
leaves zero uncertain submissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import ApiClient, FailClass, TaskState, TaskStatus, classify_fail_code
from .download import fetch_image
from .errors import (
    FatalApiError,
    PermanentApiError,
    TransientApiError,
    UncertainSubmitError,
)
from .ledger import FolderLock, JobRecord, Ledger, Phase
from .limits import RequestBudget, Slots
from .manifest import Campaign, Job, image_path
from .outputs import RunCounters, write_results, write_summary
from .scheduler import Poller, PollTimeout

__all__ = ["Engine", "RunOptions"]

log = logging.getLogger("runner")


@dataclass(frozen=True, slots=True)
class RunOptions:
    api_key: str = ""
    deadline_s: float | None = None
    retry_failed: bool = False
    progress_every_s: float = 10.0


#: the outcome of a submission was lost: submit again
_RETRY = object()

#: submissions on the wire at once: at ~0.3 s each that is ~200/s, more than the rate limit
#: lets through even while 1,000 slots fill at start; and it
#: bounds what a SIGKILL at the worst moment can leave uncertain
MAX_SUBMISSIONS_ON_WIRE = 64


class _Stop(Exception):
    """Raised inside the job TaskGroup to cancel what is left once a stop has settled."""


@dataclass(slots=True)
class _Reservations:
    """Images that submitted work could still produce, for the budget."""

    spent: int = 0  # images generated (done or downloading), all runs
    reserved: int = 0  # max_images of tasks submitted and not yet ended
    changed: asyncio.Event = field(default_factory=asyncio.Event)


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
        self._stopping = asyncio.Event()
        self._on_wire = 0  # submissions sent and not yet answered
        self._wire_idle = asyncio.Event()
        self._wire_idle.set()
        limits = campaign.limits
        self.slots = Slots(limits.concurrency)
        self._pipeline = Slots(limits.concurrency + max(64, 4 * limits.downloads))
        self._downloads = asyncio.Semaphore(limits.downloads)
        self._images = _Reservations()
        self._timed_out = 0
        self._client: ApiClient | None = None
        self._key_proven = False
        self._wire = asyncio.Semaphore(MAX_SUBMISSIONS_ON_WIRE)
        self._probe = asyncio.Lock()
        self._poller: Poller | None = None

    # -- public --------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop submitting; let submissions on the wire land; then park everything."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.warning("stopping (%s): no new submissions; run again to continue", reason)
        self._stopping.set()
        self._images.changed.set()
        self.slots.close()
        self._pipeline.close()

    async def run(self) -> int:
        """Run to completion or to a stop; return the exit code."""
        started = time.monotonic()
        lock = FolderLock(self.out)
        lock.acquire()
        try:
            self.ledger.open()
            if self.ledger.report.torn_tail or self.ledger.report.corrupt:
                log.warning(
                    "ledger: ignored a torn last line=%s, %d unreadable lines",
                    self.ledger.report.torn_tail,
                    self.ledger.report.corrupt,
                )
            self._recover_uncertain()
            async with self._api() as client:
                self._client = client
                await self._run_jobs(client)
            code = self._exit_code()
            if self.counters.remaining:
                log.warning(
                    "%d jobs remain (%s); run the same command again to continue",
                    self.counters.remaining,
                    self.stop_reason
                    or ("budget reached" if self.counters.budget_stopped else "tasks timed out"),
                )
            self.counters.wall_time_s = time.monotonic() - started
            write_results(self.campaign, self.ledger.index)
            write_summary(self.campaign, self.ledger.index, self.counters, client.stats, code)
            return code
        finally:
            self.ledger.close()
            lock.release()

    # -- set-up --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _api(self) -> AsyncIterator[ApiClient]:
        api, limits = self.campaign.api, self.campaign.limits
        budget = RequestBudget(limits.rate, limits.rate_period_s)
        async with contextlib.AsyncExitStack() as stack:
            base_url, key = api.base_url, self.options.api_key
            if api.embedded:
                from .sim import SimConfig, SimServer

                sim = SimServer(
                    SimConfig(
                        time_scale=api.sim_time_scale,
                        rate=limits.rate,
                        rate_period_s=limits.rate_period_s,
                    ),
                    host="127.0.0.1",
                    port=0,
                )
                await stack.enter_async_context(sim)
                base_url, key = sim.base_url, "embedded"
            client = ApiClient(
                base_url,
                key,
                api.model,
                budget,
                attempts=self.campaign.retry.attempts,
                connections=limits.concurrency + limits.downloads + 16,
            )
            client.halt = self._stopping
            yield await stack.enter_async_context(client)

    def _recover_uncertain(self) -> None:
        """A submission written but never answered (the last run was killed): uncertain."""
        for job_id, rec in list(self.ledger.records()):
            if rec.phase is Phase.SUBMITTING:
                self.ledger.append("uncertain", job_id, why="killed before the answer")
                self.counters.uncertain += 1
        if self.counters.uncertain:
            log.warning(
                "%d submissions of the last run have an unknown outcome (it was killed while "
                "they were on the wire); they count as uncertain and will be submitted again",
                self.counters.uncertain,
            )

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
            workers=min(64, self.campaign.limits.concurrency),
        )
        self._count_images()
        loop = asyncio.get_running_loop()
        deadline = None
        if self.options.deadline_s is not None:
            deadline = loop.call_later(self.options.deadline_s, self.request_stop, "deadline")
        try:
            async with asyncio.TaskGroup() as background:
                poll_task = background.create_task(poller.run())
                sync_task = background.create_task(self._sync_ledger())
                progress = background.create_task(self._progress())
                try:
                    async with asyncio.TaskGroup() as jobs:
                        watcher = jobs.create_task(self._stop_when_settled())
                        await self._feed(jobs)
                        await self._pipeline.wait_idle()
                        watcher.cancel()
                except* _Stop:
                    pass
                for task in (poll_task, sync_task, progress):
                    task.cancel()
        finally:
            if deadline is not None:
                deadline.cancel()

    async def _stop_when_settled(self) -> None:
        """After a stop request, once no submission is on the wire, cancel the rest."""
        await self._stopping.wait()
        while self._on_wire:
            self._wire_idle.clear()
            await self._wire_idle.wait()
        raise _Stop

    async def _sync_ledger(self) -> None:
        while True:
            await asyncio.sleep(self.ledger.FSYNC_EVERY_S)
            await asyncio.to_thread(self.ledger.sync)

    async def _progress(self) -> None:
        """One concise line per interval (the live display is the CLI's business)."""
        if self.options.progress_every_s <= 0:
            return
        while True:
            await asyncio.sleep(self.options.progress_every_s)
            c = self.counters
            log.info(
                "progress: %d done, %d failed, %d live, %d downloading, %d requests, %d 429s",
                c.done,
                c.failed,
                self.slots.used,
                c.downloading,
                sum(self._client.stats.requests.values()) if self._client else 0,
                self._client.stats.throttled if self._client else 0,
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
        for job in self._passes():
            rec = self.ledger.index.get(job.id)
            if rec is not None and rec.fp != job.fingerprint:
                rec = None  # the content changed under this id: it runs again
            action = self._action(job, rec)
            if action is None:
                continue
            if self._stopping.is_set():
                return
            if not await self._pipeline.acquire():
                return
            if action == "download":
                jobs.create_task(self._guard(job, self._download_job(job)))
                continue
            if action == "submit" and not await self._fits_budget(job):
                self._pipeline.release()
                return
            if not await self.slots.acquire():
                self._pipeline.release()
                if action == "submit":
                    self._reserve(job.max_images, -1)
                return
            if action == "poll":
                rec = self.ledger.index[job.id]
                ago = max(0.0, time.time() - (rec.submitted_t or time.time()))
                jobs.create_task(self._guard(job, self._task_job(job, rec.task_id, ago)))
            else:
                jobs.create_task(self._guard(job, self._task_job(job)))

    def _action(self, job: Job, rec: JobRecord | None) -> str | None:
        if rec is None:
            return "submit"
        if rec.phase is Phase.DONE:
            if self._files_present(rec):
                self.counters.skipped_done += 1
                return None
            return "download" if rec.urls else "submit"
        if rec.phase is Phase.FAILED:
            if self.options.retry_failed and rec.retryable:
                self.ledger.append("reset", job.id)
                return "submit"
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

    def _files_present(self, rec: JobRecord) -> bool:
        return bool(rec.files) and all(
            (self.out / str(f["path"])).is_file() for f in rec.files.values()
        )

    async def _guard(self, job: Job, work: Any) -> None:
        """Run one job's coroutine; release its pipeline place whatever happens."""
        try:
            await work
        except FatalApiError as exc:
            self._fatal(exc)
        except PermanentApiError as exc:
            self._fail(job, exc.code or f"HTTP_{exc.status}", str(exc), retryable=True)
        finally:
            self._pipeline.release()

    def _fatal(self, exc: FatalApiError) -> None:
        if self.fatal is None:
            self.fatal = exc
            log.error("%s", exc)
        self.request_stop("the API refused the account")

    # -- budget --------------------------------------------------------------------------

    def _count_images(self) -> None:
        for rec in self.ledger.index.values():
            if rec.phase in (Phase.DONE, Phase.RESULT):
                self._images.spent += len(rec.urls)
            elif rec.phase is Phase.LIVE:
                self._images.reserved += rec.max_images

    def _budget_left(self) -> float:
        b = self.campaign.budget
        used = self._images.spent + self._images.reserved
        left = float("inf")
        if b.max_images is not None:
            left = b.max_images - used
        if b.max_cost is not None:
            left = min(left, b.max_cost / b.price_per_image - used)
        return left

    async def _fits_budget(self, job: Job) -> bool:
        """Wait while work in flight might still leave room; False once it cannot."""
        while self._budget_left() < job.max_images:
            if self._stopping.is_set():
                return False
            if not self._images.reserved:
                # Nothing in flight could free room: admit no more, but let the work
                # already paid for (downloads) finish.
                self.counters.budget_stopped = True
                log.warning(
                    "budget reached: %d images spent or reserved; submitting no more",
                    self._images.spent,
                )
                return False
            self._images.changed.clear()
            await self._images.changed.wait()
        self._reserve(job.max_images, +1)
        return True

    def _reserve(self, images: int, delta: int) -> None:
        self._images.reserved += delta * images
        self._images.changed.set()

    # -- one job ---------------------------------------------------------------------------

    def _payload(self, job: Job) -> dict[str, Any]:
        return {
            "request_type": "async",
            "provider": self.campaign.api.provider,
            "input": job.input,
        }

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
                    task_id = await self._submit(job)
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
            self._reserve(job.max_images, -1)
        await self._download_job(job)

    async def _submit(self, job: Job) -> str | None:
        """Submit, one at a time until the API has accepted the key once: a bad key or
        an empty balance then costs one refused request, not a thousand."""
        if self._key_proven:
            return await self._submit_recorded(job)
        async with self._probe:
            task_id = await self._submit_recorded(job)
            if task_id is not None:
                self._key_proven = True
            return task_id

    async def _submit_recorded(self, job: Job) -> str | None:
        """Submit until a task exists or the job cannot go on. None: no task."""
        while True:
            async with self._wire:
                outcome = await self._send_submission(job)
            if outcome is not _RETRY:
                return outcome if isinstance(outcome, str) else None

    async def _send_submission(self, job: Job) -> object:
        """One submission, its intent written before it is sent and its outcome after.
        Returns the taskId, None (no task was created) or _RETRY (the outcome was lost)."""
        if self._stopping.is_set():
            return None
        assert self._client is not None
        self.ledger.append("submit", job.id, fp=job.fingerprint, imgs=job.max_images)
        self._on_wire += 1
        self.counters.submitted += 1
        try:
            task_id = await self._client.submit(self._payload(job))
        except UncertainSubmitError as exc:
            self.ledger.append("uncertain", job.id, why=str(exc))
            self.counters.uncertain += 1
            if self.ledger.index[job.id].uncertain >= self.campaign.retry.attempts:
                self._fail(job, "UNCERTAIN", "submissions kept losing their answer", True)
                return None
            return _RETRY
        except PermanentApiError as exc:
            self._key_proven = True  # the key passed; this job's content did not
            if exc.code == "BAD_ANSWER":
                # Answered 200 but unreadably: a task may exist. Never pay again blindly.
                self.ledger.append("uncertain", job.id, why=str(exc))
                self.counters.uncertain += 1
                self._fail(job, "BAD_ANSWER", str(exc), retryable=True)
            else:
                self.ledger.append("unsent", job.id, status=exc.status)
                self._fail(job, exc.code or f"HTTP_{exc.status}", str(exc), retryable=False)
            return None
        except (TransientApiError, FatalApiError) as exc:
            self.ledger.append("unsent", job.id, status=exc.status)
            if isinstance(exc, FatalApiError):
                raise
            if not self._stopping.is_set():
                self._fail(job, "SUBMIT_FAILED", str(exc), retryable=True)
            return None
        finally:
            self._on_wire -= 1
            if not self._on_wire:
                self._wire_idle.set()
        self.ledger.append("task", job.id, task=task_id)
        return task_id

    async def _wait(self, job: Job, task_id: str, ago: float) -> TaskStatus | None:
        """Wait for the task's terminal status. None: it stays live (timeout or stop)."""
        assert self._poller is not None
        future = self._poller.watch(task_id, self._kind(job), ago)
        try:
            return await future
        except PollTimeout:
            self.ledger.append("timeout", job.id, task=task_id)
            self._timed_out += 1
            return None
        except asyncio.CancelledError:
            self._poller.forget(task_id)
            raise

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
            self._images.spent += len(status.result_urls)
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
        log.warning("job %s failed: %s %s", job.id, code, message)

    async def _download_job(self, job: Job) -> None:
        rec = self.ledger.index[job.id]
        assert self._client is not None
        self.counters.downloading += 1
        try:
            for index, url in enumerate(rec.urls):
                if index in rec.files and (self.out / str(rec.files[index]["path"])).is_file():
                    continue
                async with self._downloads:
                    record = await self._fetch(job, rec, index, url)
                self.ledger.append(
                    "file",
                    job.id,
                    i=index,
                    path=record.path.relative_to(self.out).as_posix(),
                    bytes=record.bytes,
                    sha256=record.sha256,
                )
                self.counters.images += 1
        except TransientApiError as exc:
            log.warning("job %s: download failed for now: %s", job.id, exc)
            self.counters.download_parked += 1
            return
        except PermanentApiError as exc:
            self._fail(job, exc.code or "DOWNLOAD_FAILED", str(exc), retryable=True)
            return
        finally:
            self.counters.downloading -= 1
        self.ledger.append("done", job.id, task=rec.task_id)
        self.counters.done += 1

    async def _fetch(self, job: Job, rec: JobRecord, index: int, url: str) -> Any:
        assert self._client is not None
        part_name = hashlib.sha1(job.id.encode()).hexdigest()[:20] + f"-{index}.part"

        def dest_for(ext: str) -> Path:
            return image_path(self.campaign.output, job.id, index, ext, rec.task_id or "")

        return await fetch_image(
            self._client,
            url,
            self.out / ".tmp" / part_name,
            dest_for,
            attempts=self.campaign.retry.attempts,
            backoff_s=0.5 * self._time_scale,
        )

    # -- the end -------------------------------------------------------------------------

    def _exit_code(self) -> int:
        if self.fatal is not None:
            return 3
        remaining = 0
        failed = 0
        for job in self.campaign.jobs():
            rec = self.ledger.index.get(job.id)
            if rec is None or rec.fp != job.fingerprint:
                remaining += 1
            elif rec.phase is Phase.FAILED:
                failed += 1
            elif rec.phase is not Phase.DONE:
                remaining += 1
        self.counters.remaining = remaining
        if remaining:
            return 4
        return 1 if failed else 0
