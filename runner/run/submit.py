"""The submission protocol: the one place a paid request is sent.

For every try the ledger gets ``submit`` *before* the request leaves, and ``task`` (with
the taskId) or ``unsent`` or ``uncertain`` as soon as the outcome is known. So after a
kill at any moment the ledger tells exactly which submissions may have created a task
nobody knows about: those with an intent and no outcome.

What a refused or unanswered try leads to is the outcome policy's word
(:mod:`runner.api.outcome`), acted on here:

* UNCERTAIN (a 5xx, a timeout or a reset after sending, an unreadable 200): recorded as
  ``uncertain`` (and counted) before anything is sent again; sent again after a backoff
  until ``retry.uncertain`` of them in this run, then the job is left pending for a later
  run (``RunCounters.uncertain_gave_up``);
* WAIT_SLOT (a 429: the live-task limit or the rate): ``unsent``, not counted against
  ``retry.attempts``; sent again with growing, jittered pauses until it goes through,
  the run stops, or ``retry.slot_wait`` has passed, when the job is left pending
  (``RunCounters.slot_waits_expired``) for a later run;
* RETRY once the client's retries are spent (the API could not be reached): ``unsent``,
  the job stays pending; a job that certainly never reached the API is not failed;
* PERMANENT: ``unsent`` and the job fails, but a 404 (no such model or path) stops the
  run as a configuration error (exit 2, the jobs stay pending); FATAL: ``unsent`` and the
  run stops.

Three guards keep payment frugal:

* **one try at a time until the key is proven**: until the API has once answered a
  submission with something other than a refusal of the account, tries are serialised,
  so a bad key or an empty balance costs one request, not a thousand;
* **a cap on submissions on the wire** (:data:`MAX_ON_WIRE`), the bound on what a SIGKILL
  at the worst moment can leave uncertain;
* **a cap on blind resubmission**: ``retry.uncertain``.

Owns: the ``submit``, ``task``, ``unsent`` and ``uncertain`` events, and when to send
again. Must not know: polling, downloads, the order jobs come in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from runner.api.client import ApiClient
from runner.api.outcome import Outcome
from runner.errors import ApiError, FatalApiError, ManifestError
from runner.manifest.jobspec import Job
from runner.manifest.settings import Retry
from runner.present.outputs import RunCounters
from runner.state.events import Submit, Task, Uncertain, Unsent
from runner.state.ledger import Ledger
from runner.state.record import Phase

__all__ = ["MAX_ON_WIRE", "Submitter"]

log = logging.getLogger("runner")

#: Submissions on the wire at once. At ~0.3 s a round trip that is ~200 per second, more
#: than the rate limit lets through even while 1,000 slots fill at start.
MAX_ON_WIRE = 64

FailJob = Callable[[Job, str, str, bool], None]


class Submitter:
    """Submits jobs (:meth:`submit`) under the protocol of the module docstring.
    ``retry`` gives ``uncertain`` and ``slot_wait_s``."""

    def __init__(
        self,
        client: ApiClient,
        ledger: Ledger,
        counters: RunCounters,
        *,
        provider: str,
        callback_url: str | None,
        fail: FailJob,
        stopping: asyncio.Event,
        retry: Retry,
        maybe_paid: Callable[[int], bool] = lambda images: True,
    ) -> None:
        self.client = client
        #: told the images a submission of unknown outcome may have been billed for;
        #: answers whether sending it again still fits the budget
        self._maybe_paid = maybe_paid
        self.ledger = ledger
        self.counters = counters
        self._provider = provider
        self._callback_url = callback_url
        self._fail = fail
        self._stopping = stopping
        self._max_uncertain = retry.uncertain
        self._slot_wait_s = retry.slot_wait_s
        self._key_proven = False
        self._probe = asyncio.Lock()
        self._wire = asyncio.Semaphore(MAX_ON_WIRE)
        self.on_wire = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def recover_uncertain(self) -> int:
        """Count as uncertain every submission an earlier run wrote but never saw
        answered (it was killed meanwhile); those jobs will be submitted again."""
        lost = [
            job_id for job_id, rec in self.ledger.index.items() if rec.phase is Phase.SUBMITTING
        ]
        for job_id in lost:
            self.ledger.append(job_id, Uncertain("killed before the answer"))
        self.counters.uncertain += len(lost)
        if lost:
            log.warning(
                "%d submissions of the last run have an unknown outcome (it was killed while "
                "they were on the wire); they count as uncertain and will be submitted again",
                len(lost),
            )
        return len(lost)

    def payload(self, job: Job) -> dict[str, Any]:
        """The request body for a job: its input, and where to post the result in
        callback mode."""
        body: dict[str, Any] = {"request_type": "async", "provider": self._provider}
        if self._callback_url is not None:
            body["request_type"] = "callback"
            body["callback_url"] = self._callback_url
        body["input"] = job.input
        return body

    async def settled(self) -> None:
        """Wait until no submission is on the wire (after a stop, none starts)."""
        while self.on_wire:
            self._idle.clear()
            await self._idle.wait()

    async def submit(self, job: Job) -> str | None:
        """Submit until a task exists (its taskId) or the job cannot go on now (None:
        it failed, or it stays pending for a later run). Raises FatalApiError."""
        backoff = self.client.backoff
        uncertain = slot_tries = 0
        started = self.client.clock.monotonic()
        slot_wait_since: float | None = None
        while True:
            if self._stopping.is_set():
                return None
            answer = await self._try(job)
            if isinstance(answer, str):
                return answer
            outcome = answer.outcome
            if outcome is Outcome.UNCERTAIN:
                uncertain += 1
                # The unknown one may have used the room: resend only if it still fits.
                if not self._maybe_paid(job.max_images):
                    log.warning(
                        "job %s: a submission's outcome is unknown and it may have been "
                        "billed; sending it again could pass the budget cap: it stays "
                        "pending",
                        job.id,
                    )
                    return None
                resending_s = self.client.clock.monotonic() - started
                if uncertain >= self._max_uncertain or resending_s > backoff.window_s:
                    # Each resend may pay again: stop for this run. Not a failure: the API
                    # is in trouble, not the job; a later run submits it again.
                    self.counters.uncertain_gave_up += 1
                    log.debug("job %s: %d submissions of unknown outcome", job.id, uncertain)
                    return None
                delay = backoff.delay(uncertain, answer.retry_after)
            elif outcome is Outcome.WAIT_SLOT:
                now = self.client.clock.monotonic()
                slot_wait_since = now if slot_wait_since is None else slot_wait_since
                left = self._slot_wait_s - (now - slot_wait_since)
                if left <= 0:
                    self._count(
                        "slot_waits_expired",
                        "job %s: no task slot within retry.slot_wait (%gs); it stays "
                        "pending for the next run",
                        job.id,
                        self._slot_wait_s,
                    )
                    return None
                slot_tries += 1
                delay = min(left, backoff.slot_delay(slot_tries, answer.retry_after))
            elif outcome is Outcome.RETRY:
                # The API could not be reached (or the run is stopping), but certainly no
                # task was created.
                if not self._stopping.is_set():
                    self._count(
                        "not_sent", "job %s: not submitted (%s); it stays pending", job.id, answer
                    )
                return None
            elif answer.status == 404:
                # Not this job's fault: the API knows no such model or path. Every job
                # would fail alike; stop the run (exit 2), the jobs stay pending.
                raise ManifestError(
                    f"the API answered 404 Not Found to a submission ({self.client.base_url}"
                    f"/generateTask/{self.client.model}): check api.base_url and api.model; "
                    "no task was created and the jobs stay pending",
                    "api",
                )
            else:  # PERMANENT (LOST does not answer a submission)
                self._fail(job, answer.code or f"HTTP_{answer.status}", str(answer), False)
                return None
            if await self._stopped_within(delay):
                return None

    def _count(self, counter: str, message: str, *args: object) -> None:
        """Count one job left pending for ``counter``'s reason; only the first is told
        (a thousand jobs waiting for the same outage make one line, not a thousand)."""
        n = getattr(self.counters, counter) + 1
        setattr(self.counters, counter, n)
        if n == 1:
            log.warning(message + " (later ones are counted, not listed)", *args)

    async def _stopped_within(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less if the run starts stopping; True if it did."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return False
        return True

    async def _try(self, job: Job) -> str | ApiError:
        """One try, serialised until the key is proven."""
        if self._key_proven:
            async with self._wire:
                return await self._send(job)
        async with self._probe, self._wire:
            answer = await self._send(job)
            # Anything but a refusal of the account (which raised) proves the key, except
            # answers that may come before the key is checked: 429 and the unreachable.
            if isinstance(answer, str) or answer.outcome not in (
                Outcome.WAIT_SLOT,
                Outcome.RETRY,
                Outcome.UNCERTAIN,
            ):
                self._key_proven = True
            return answer

    async def _send(self, job: Job) -> str | ApiError:
        """One submission, its intent and outcome written to the ledger: the taskId, or
        the error (already recorded) the caller acts on. Raises FatalApiError."""
        self.ledger.append(job.id, Submit(job.fingerprint, job.max_images))
        self.on_wire += 1
        self.counters.submitted += 1
        try:
            task_id = await self.client.submit(self.payload(job))
        except ApiError as exc:
            if exc.outcome is Outcome.UNCERTAIN:
                self._uncertain(job, str(exc))
            else:
                self.ledger.append(job.id, Unsent(exc.status))
            return exc
        except FatalApiError as exc:
            self.ledger.append(job.id, Unsent(exc.status))
            raise
        finally:
            self.on_wire -= 1
            if not self.on_wire:
                self._idle.set()
        self.ledger.append(job.id, Task(task_id))
        return task_id

    def _uncertain(self, job: Job, why: str) -> None:
        self.ledger.append(job.id, Uncertain(why))
        self.counters.uncertain += 1
