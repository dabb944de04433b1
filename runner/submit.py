"""The submission protocol: the one place a paid request is sent.

For every submission the ledger gets ``submit`` *before* the request leaves, and
``task`` (with the taskId) or ``unsent`` or ``uncertain`` as soon as the outcome is known.
So after a kill at any moment the ledger tells exactly which submissions may have created
a task nobody knows about: those with an intent and no outcome.

Three guards keep payment frugal:

* **one at a time until the key is proven**: until the API has once answered a
  submission with something other than a refusal of the account, submissions are
  serialised, so a bad key or an empty balance costs one request, not a thousand;
* **a cap on submissions on the wire** (:data:`MAX_ON_WIRE`), the bound on what a SIGKILL
  at the worst moment can leave uncertain;
* **no blind resubmission of an unreadable success**: a 200 that cannot be parsed may
  hide a task, so the job fails (retryable by ``--retry-failed``) instead of paying again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .client import ApiClient
from .errors import FatalApiError, PermanentApiError, TransientApiError, UncertainSubmitError
from .ledger import Ledger, Phase
from .manifest import Job
from .outputs import RunCounters

__all__ = ["MAX_ON_WIRE", "Submitter"]

log = logging.getLogger("runner")

#: Submissions on the wire at once. At ~0.3 s a round trip that is ~200 per second, more
#: than the rate limit lets through even while 1,000 slots fill at start.
MAX_ON_WIRE = 64

_RETRY = object()  # the outcome was lost: submit again

FailJob = Callable[[Job, str, str, bool], None]


class Submitter:
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
        max_uncertain: int,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.counters = counters
        self._provider = provider
        self._callback_url = callback_url
        self._fail = fail
        self._stopping = stopping
        self._max_uncertain = max_uncertain
        self._key_proven = False
        self._probe = asyncio.Lock()
        self._wire = asyncio.Semaphore(MAX_ON_WIRE)
        self.on_wire = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def recover_uncertain(self) -> int:
        """Count as uncertain every submission an earlier run wrote but never saw
        answered (it was killed meanwhile); those jobs will be submitted again."""
        lost = [job_id for job_id, rec in self.ledger.records() if rec.phase is Phase.SUBMITTING]
        for job_id in lost:
            self.ledger.append("uncertain", job_id, why="killed before the answer")
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
        """Submit until a task exists (its taskId) or the job cannot go on (None)."""
        if self._key_proven:
            return await self._submit(job)
        async with self._probe:
            task_id = await self._submit(job)
            if task_id is not None:
                self._key_proven = True
            return task_id

    async def _submit(self, job: Job) -> str | None:
        while True:
            async with self._wire:
                outcome = await self._send(job)
            if outcome is not _RETRY:
                return outcome if isinstance(outcome, str) else None

    async def _send(self, job: Job) -> object:
        """One submission: returns the taskId, None (no task was created) or _RETRY."""
        if self._stopping.is_set():
            return None
        self.ledger.append("submit", job.id, fp=job.fingerprint, imgs=job.max_images)
        self.on_wire += 1
        self.counters.submitted += 1
        try:
            task_id = await self.client.submit(self.payload(job))
        except UncertainSubmitError as exc:
            self._uncertain(job, str(exc))
            if self.ledger.index[job.id].uncertain >= self._max_uncertain:
                self._fail(job, "UNCERTAIN", "submissions kept losing their answer", True)
                return None
            return _RETRY
        except PermanentApiError as exc:
            self._key_proven = True  # the key passed; this job's content did not
            if exc.code == "BAD_ANSWER":
                self._uncertain(job, str(exc))
                self._fail(job, "BAD_ANSWER", str(exc), True)
            else:
                self.ledger.append("unsent", job.id, status=exc.status)
                self._fail(job, exc.code or f"HTTP_{exc.status}", str(exc), False)
            return None
        except (TransientApiError, FatalApiError) as exc:
            self.ledger.append("unsent", job.id, status=exc.status)
            if isinstance(exc, FatalApiError):
                raise
            if not self._stopping.is_set():
                self._fail(job, "SUBMIT_FAILED", str(exc), True)
            return None
        finally:
            self.on_wire -= 1
            if not self.on_wire:
                self._idle.set()
        self.ledger.append("task", job.id, task=task_id)
        return task_id

    def _uncertain(self, job: Job, why: str) -> None:
        self.ledger.append("uncertain", job.id, why=why)
        self.counters.uncertain += 1
