"""The engine: one run over one campaign, wired together. Wiring only: the job state
machine is :mod:`runner.run.jobs`, the order and admission of jobs :mod:`runner.run.feed`,
the exit code :mod:`runner.run.exits`.

A run, in order: take the folder's lock; open (replay) the ledger; adopt what other
layouts of the campaign did (:mod:`runner.run.adopt`); connect to the API
(:mod:`runner.run.connect`) and, in callback mode, start the webhook receiver and prove
its public URL; count the submissions a killed run left without an answer as
uncertain; run the jobs; then write ``results.jsonl``, ``summary.json`` and
``report.html`` from the ledger, and return the summary.

Structure: one TaskGroup owns the poller, the ledger syncer, the progress display and
the webhook watch; a second owns the jobs, started by the feed, which takes a job's
places (pipeline, budget, task slot) *before* it creates its task, so memory follows the
limits, not the manifest's length.

Stopping (first SIGINT/SIGTERM, ``--deadline``, a refused account): no new submission
starts, every submission already on the wire is allowed to land in the ledger, then the
work already paid for (tasks alive on the API, images to download) goes on for up to
``--drain`` seconds; what is left is then cancelled. Tasks alive on the API stay in the
ledger as ``live`` and are polled again by the next run, however old; partial downloads
are resumed. So a graceful stop leaves zero uncertain submissions, and parks only what
could not finish within the drain. The budget cap stops submissions only: everything in
flight finishes.

Owns: the run's shape (what starts, in what order, what stops it). Must not know: HTTP,
the ledger's format, what a job does next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.api.callback import SILENCE_S, CallbackReceiver, load_secret
from runner.api.client import ApiClient
from runner.clock import SYSTEM_CLOCK, Clock
from runner.errors import FatalApiError, LockedError, ManifestError
from runner.manifest.campaign import Campaign
from runner.present.outputs import RunCounters, ledger_view, write_results, write_summary
from runner.present.progress import ProgressReporter, Snapshot
from runner.present.report import write_report
from runner.state.layouts import paid_elsewhere
from runner.state.ledger import LEDGER_NAME, Ledger
from runner.state.lock import FolderLock
from runner.state.record import JobState

from .adopt import adopt_other_layouts
from .budget import ImageBudget
from .connect import SENDS_FILE, check_api_kind, connect, request_gate, saving_sends
from .download import Downloader
from .exits import ExitCode, RunEnd, exit_code, uncertain_note, why_remaining
from .feed import Feeder
from .jobs import Failures, JobFlow, Retention
from .poller import Poller
from .slots import Slots
from .submit import Submitter

__all__ = ["Engine", "RunOptions"]

log = logging.getLogger("runner")


@dataclass(frozen=True, slots=True)
class RunOptions:
    api_key: str = ""
    deadline_s: float | None = None
    #: after a stop, seconds to keep polling and downloading work already paid for
    drain_s: float = 120.0
    retry_failed: bool = False
    progress_every_s: float = 10.0


class _Stop(Exception):
    """Raised inside the job TaskGroup to cancel what is left once a stop has settled."""


class Engine:
    """One run over one campaign. Not reusable. ``clock``: the run's one clock."""

    def __init__(
        self, campaign: Campaign, options: RunOptions, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.campaign = campaign
        self.options = options
        self.clock = clock
        self.out = campaign.output.dir
        self.ledger = Ledger(self.out, clock)
        self.counters = RunCounters()
        self.stop_reason: str | None = None
        self.fatal: FatalApiError | None = None
        #: the API said the configuration is wrong (exit 2)
        self.config_error: ManifestError | None = None
        #: another run took this folder's lock over (a file lock whose heartbeat stopped)
        self.lock_lost: LockedError | None = None
        self._stopping = asyncio.Event()
        limits = campaign.limits
        self.slots = Slots(limits.concurrency)
        self._pipeline = Slots(limits.concurrency + max(64, 4 * limits.downloads))
        self.budget = ImageBudget(campaign.budget)  # replaced once the ledger is read
        self._client: ApiClient | None = None
        self._receiver: CallbackReceiver | None = None
        self._poller: Poller | None = None
        self._flow: JobFlow | None = None

    def request_stop(self, reason: str) -> None:
        """Stop submitting; let submissions on the wire land; then park everything."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.warning("stopping (%s): no new submissions; run again to continue", reason)
        self._stopping.set()
        self.budget.wake()
        # Waiters for a slot would submit: let them go. Paid work found later in the
        # feed takes its slot without waiting (see runner.run.feed).
        self.slots.close()
        self._pipeline.close()

    def _halt(self, exc: FatalApiError | ManifestError) -> None:
        """The API refused the account (exit 3), or said the configuration is wrong
        (exit 2): stop the run."""
        if isinstance(exc, ManifestError):
            if self.config_error is None:
                self.config_error = exc
                log.error("%s", exc)
            self.request_stop("the configuration must be fixed")
            return
        if self.fatal is None:
            self.fatal = exc
            log.error("%s", exc)
        self.request_stop("the API refused the account")

    async def run(self) -> dict[str, Any]:
        """Run to completion or to a stop; return the summary written to
        ``summary.json`` (its ``exit_code`` is the run's)."""
        started = self.clock.monotonic()
        lock = FolderLock(self.out)
        lock.acquire()
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        lock.on_lost = lambda error: loop.call_soon_threadsafe(self._lose_lock, error, task)
        try:
            sends = self.out / SENDS_FILE
            last_run = _last_write(self.out / LEDGER_NAME)
            gate = request_gate(self.campaign, self.clock, last_run_wall=last_run, sends_path=sends)
            async with saving_sends(gate, sends, self.clock):
                self._open_ledger()
                async with connect(self.campaign, self.options.api_key, gate) as client:
                    self._client = client
                    client.halt = self._stopping
                    async with self._webhooks():
                        await self._run_jobs(client)
                return self._finish(client, started)
        except asyncio.CancelledError:
            if self.lock_lost is None or task is None:
                raise
            task.uncancel()
            raise self.lock_lost from None
        finally:
            self.ledger.close()
            lock.release()

    def _lose_lock(self, error: LockedError, task: asyncio.Task[Any] | None) -> None:
        """Another run took the folder over: stop at once, writing no summary (exit 5)."""
        self.lock_lost = error
        if task is not None:
            task.cancel()

    def _open_ledger(self) -> None:
        self.ledger.open()
        self.campaign.save_index()  # the job table, if the output folder was new
        check_api_kind(self.campaign, self.ledger.index)
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

    @contextlib.asynccontextmanager
    async def _webhooks(self) -> AsyncIterator[None]:
        """Callback mode: the receiver, its public URL proven before anything is sent."""
        api = self.campaign.api
        if api.mode != "callback":
            yield
            return
        self._receiver = CallbackReceiver(
            api.callback_listen,
            api.callback_public_url,
            load_secret(self.out),
            known=lambda task_id: self._poller is not None and self._poller.knows(task_id),
            accept=lambda status: self._flow is not None and self._flow.accept_delivery(status),
            clock=self.clock,
        )
        async with self._receiver:
            await self._receiver.prove_public_url()  # exit 2 before any submission
            yield

    async def _run_jobs(self, client: ApiClient) -> None:
        campaign, ledger, receiver = self.campaign, self.ledger, self._receiver
        scale = campaign.api.time_scale
        failures = Failures(ledger, self.counters)
        retention = Retention(campaign.api, self.clock)
        downloader = Downloader(
            client,
            ledger,
            campaign,
            self.counters,
            fail=failures.fail,
            backoff_s=0.5 * scale,
            still_kept=retention.keeps,
        )
        submitter = Submitter(
            client,
            ledger,
            self.counters,
            provider=campaign.api.provider,
            callback_url=receiver.callback_url if receiver is not None else None,
            fail=failures.fail,
            stopping=self._stopping,
            retry=campaign.retry,
            maybe_paid=lambda images: self.budget.maybe_paid(images),
        )
        submitter.recover_uncertain()
        index = ledger.index
        paid, uncertain = index.billed_images(), index.uncertain_images()
        if campaign.budget.max_images is not None or campaign.budget.max_cost is not None:
            # A cap is the campaign's: what other layouts paid counts too (each shard of
            # the run's own split is its own, running beside it: give each 1/N of the cap).
            elsewhere = paid_elsewhere(campaign)
            paid, uncertain = paid + elsewhere[0], uncertain + elsewhere[1]
        self.budget = ImageBudget(campaign.budget, index.values(), paid=paid, uncertain=uncertain)
        self._poller = poller = Poller.for_campaign(
            client,
            campaign.polling,
            time_scale=scale,
            callbacks=receiver is not None,
            workers=min(64, campaign.limits.concurrency),
        )
        self._flow = flow = JobFlow(
            ledger=ledger,
            counters=self.counters,
            failures=failures,
            submitter=submitter,
            poller=poller,
            downloader=downloader,
            slots=self.slots,
            budget=self.budget,
            stopping=self._stopping,
            halt=self._halt,
            retention=retention,
            retry_failed=self.options.retry_failed,
            failed_tasks=campaign.retry.failed_tasks,
            callbacks=receiver is not None,
        )
        feeder = Feeder(
            campaign, ledger, flow, self._pipeline, self._stopping, self.counters, self.clock
        )
        deadline = None
        if self.options.deadline_s == 0:
            self.request_stop("deadline")  # submit nothing; still collect paid work
        elif self.options.deadline_s is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.call_later(self.options.deadline_s, self.request_stop, "deadline")
        try:
            async with asyncio.TaskGroup() as background:
                helpers = [
                    background.create_task(poller.run()),
                    background.create_task(self._sync_ledger()),
                    background.create_task(self._progress()),
                ]
                if receiver is not None:  # one warning if webhooks stop arriving
                    silence = receiver.watch_silence(poller.overdue, SILENCE_S * scale)
                    helpers.append(background.create_task(silence))
                try:
                    async with asyncio.TaskGroup() as jobs:
                        watcher = jobs.create_task(self._stop_when_settled(submitter))
                        await feeder.feed(jobs)
                        await self._pipeline.wait_idle()
                        watcher.cancel()
                except* _Stop:
                    pass
                for task in helpers:
                    task.cancel()
        finally:
            if deadline is not None:
                deadline.cancel()
        failures.report()
        c = self.counters
        c.polled_results, c.webhook_results = poller.resolved_by_poll, poller.resolved_by_webhook
        if receiver is not None:
            c.webhook_duplicates, c.webhook_rejected = receiver.duplicates, receiver.rejected

    async def _stop_when_settled(self, submitter: Submitter) -> None:
        """After a stop request, once no submission is on the wire, drain the work already
        paid for for up to ``drain_s``, then cancel what is left (it stays in the ledger)."""
        await self._stopping.wait()
        await submitter.settled()
        if self.options.drain_s > 0:
            log.info(
                "draining: collecting tasks already paid for, for up to %g s (--drain)",
                self.options.drain_s,
            )
            await self.clock.sleep(self.options.drain_s)
        raise _Stop

    async def _sync_ledger(self) -> None:
        while True:
            await self.clock.sleep(self.ledger.FSYNC_EVERY_S)
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

    def _finish(self, client: ApiClient, started: float) -> dict[str, Any]:
        """The run's end: its exit code, and what it leaves beside the images."""
        view = ledger_view(self.campaign, self.ledger.index)
        self.campaign.release_table()  # the last use: the outputs stream the manifest
        ended = sum(n for state, n in view.states.items() if state.ended)
        failed = view.states[JobState.FAILED] + view.states[JobState.LOST]
        end = RunEnd(
            jobs=view.jobs,
            ended=ended,
            failed=failed,
            misconfigured=self.config_error is not None,
            refused=self.fatal is not None,
            stopped=self.stop_reason is not None or bool(self.counters.timed_out),
            budget_refused=bool(self.counters.budget_refused),
        )
        code = exit_code(end)
        self.counters.remaining = end.remaining
        note = uncertain_note(self.counters)
        if note is not None:
            log.warning("%s", note)
        if end.remaining and code is ExitCode.STOPPED:
            log.warning(
                "%d jobs remain (%s); run the same command again to continue",
                end.remaining,
                "; ".join(why_remaining(self.counters, self.stop_reason)),
            )
        self.counters.wall_time_s = self.clock.monotonic() - started
        write_results(self.campaign, self.ledger.index)
        summary = write_summary(self.campaign, view, self.counters, client.stats, int(code))
        write_report(self.campaign, self.ledger.index, summary)
        return summary


def _last_write(path: Path) -> float | None:
    """When ``path`` was last written (Unix seconds); None if it does not exist."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None
