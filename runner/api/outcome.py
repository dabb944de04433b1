"""The outcome policy: what every answer from the API or a result host means for the job.

Every answer (a submission, a status poll, a download, a webhook) is classified once,
here, into an :class:`Outcome`; the client raises the error of that outcome
(:func:`runner.errors.api_error`) and everything above acts on ``exc.outcome``, never on
status numbers or code strings. Task ``failCode``s are classified here too
(:func:`classify_fail_code`).

The facts a classification starts from are the kind of request (:class:`Request`), what
went wrong (:class:`Fault`) and, for an HTTP answer, its status. The table, by request:

=================================  ==========  ==========  ==========  ==========
fault                              submit      status      file        webhook
=================================  ==========  ==========  ==========  ==========
not sent (no connection, stopping) RETRY       RETRY       RETRY       -
connection lost after sending      UNCERTAIN   RETRY       RETRY       -
429                                WAIT_SLOT   RETRY       RETRY       -
408                                RETRY       RETRY       RETRY       -
500, 502, 503, 504 (any 5xx)       UNCERTAIN   RETRY       RETRY       -
401, 402, INSUFFICIENT_CREDITS     FATAL       FATAL       PERMANENT   -
403                                FATAL       FATAL       LOST        -
404                                PERMANENT   LOST        LOST        -
410                                PERMANENT   PERMANENT   LOST        -
416 (a resume the server refused)  -           -           RETRY       -
other 4xx, other statuses          PERMANENT   PERMANENT   PERMANENT   -
a 200 that cannot be read          UNCERTAIN   RETRY       -           PERMANENT
short, damaged or foreign body     -           -           RETRY       -
a body over the size cap           -           -           PERMANENT   -
=================================  ==========  ==========  ==========  ==========

A RETRY is retried after a delay, bounded by attempts *and* time with jitter
(:class:`Backoff`, after stamina). When those run out, :func:`exhausted` says what it
becomes: a submission certainly never sent stays pending for a later run, a task whose
status cannot be read stays live and is polled again later, a result host that cannot be
reached means a dead URL (LOST, which the downloader answers by polling the task for
fresh URLs), a body that keeps arriving damaged fails the job; anything else waits for the
next run.

Owns: the table and the backoff. Must not know: jobs, the ledger, HTTP libraries (the
client reports what it saw as a :class:`Request` and a :class:`Fault`).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

# Outcome and Fault are defined beside the error tree that carries them, and are part of
# this policy's vocabulary.
from runner.errors import Fault, Outcome

__all__ = [
    "RETRY_WINDOW_S",
    "SLOT_BACKOFF_MAX_S",
    "Backoff",
    "FailClass",
    "Fault",
    "Outcome",
    "Request",
    "classify",
    "classify_fail_code",
    "exhausted",
]

#: no request is retried for longer than this, whatever ``retry.attempts`` allows
RETRY_WINDOW_S = 600.0
#: the longest pause between two tries of a submission waiting for a task slot
SLOT_BACKOFF_MAX_S = 30.0


class Request(enum.Enum):
    """What was asked."""

    SUBMIT = "submit"
    STATUS = "status"
    FILE = "file"  # a result URL
    WEBHOOK = "webhook"  # a delivery the provider posted to us


class FailClass(enum.Enum):
    """How a task ``failCode`` is treated."""

    PERMANENT = "permanent"
    RETRYABLE = "retryable"  # resubmitted within ``retry.failed_tasks``
    FATAL = "fatal"

    @property
    def outcome(self) -> Outcome:
        return _FAIL_OUTCOMES[self]


_FAIL_OUTCOMES = {
    FailClass.PERMANENT: Outcome.PERMANENT,
    FailClass.RETRYABLE: Outcome.RETRY,
    FailClass.FATAL: Outcome.FATAL,
}

_PERMANENT_CODES = frozenset(
    {
        "CONTENT_VIOLATION",
        "NSFW_DETECTED",
        "PROMPT_TOO_LONG",
        "INVALID_PROMPT",
        "INVALID_IMAGE_URL",
        "IMAGE_TOO_LARGE",
        "UNSUPPORTED_FORMAT",
    }
)
_FATAL_CODES = frozenset({"INSUFFICIENT_CREDITS"})


def classify_fail_code(code: str | None) -> FailClass:
    """How the runner treats a task ``failCode`` (see the API page's table). Unknown,
    provider-specific codes are retryable within the resubmission budget."""
    if code in _FATAL_CODES:
        return FailClass.FATAL
    if code in _PERMANENT_CODES:
        return FailClass.PERMANENT
    return FailClass.RETRYABLE


def classify(request: Request, fault: Fault, status: int = 0, code: str = "") -> Outcome:
    """The outcome of one answer (the module's table). ``status`` is the HTTP status of
    a ``Fault.STATUS`` answer; ``code`` the error code its body named, if any."""
    submit = request is Request.SUBMIT
    if fault is Fault.NOT_SENT:
        return Outcome.RETRY
    if fault is Fault.CONNECTION_LOST:
        # Sent, perhaps received: a submission may have created a task.
        return Outcome.UNCERTAIN if submit else Outcome.RETRY
    if fault is Fault.UNREADABLE:
        if submit:
            return Outcome.UNCERTAIN  # a 200 came back: the task may well exist
        # A webhook is refused and changes nothing (polling finds the task); a status
        # answer is asked for again: the task may be perfectly good.
        return Outcome.PERMANENT if request is Request.WEBHOOK else Outcome.RETRY
    if fault in (Fault.SHORT_BODY, Fault.BAD_BODY):
        return Outcome.RETRY
    if fault is Fault.TOO_LARGE:
        return Outcome.PERMANENT
    return _classify_status(request, status, code)


def _classify_status(request: Request, status: int, code: str) -> Outcome:
    if request is Request.FILE:
        # Result URLs live on another host, which knows nothing of the account.
        if status in (403, 404, 410):
            return Outcome.LOST  # expired or gone: the downloader asks for fresh URLs
        if status in (408, 416, 429) or status >= 500:
            return Outcome.RETRY
        return Outcome.PERMANENT
    if status in (401, 402, 403) or code in _FATAL_CODES:
        return Outcome.FATAL
    if status == 429:
        # The API does not say which limit: either way no task was created.
        return Outcome.WAIT_SLOT if request is Request.SUBMIT else Outcome.RETRY
    if status == 408:
        return Outcome.RETRY  # the server did not take the request in
    if status >= 500:
        return Outcome.UNCERTAIN if request is Request.SUBMIT else Outcome.RETRY
    if status == 404 and request is Request.STATUS:
        return Outcome.LOST  # the API no longer knows a task it once gave us
    return Outcome.PERMANENT


def exhausted(request: Request, fault: Fault) -> Outcome:
    """What a RETRY becomes once its attempts or its time have run out: RETRY means
    "leave it for later" (the job stays pending, the task stays live, the download is
    parked for the next run)."""
    if request is Request.FILE:
        if fault is Fault.NOT_SENT:
            return Outcome.LOST  # the URL's host is gone: a dead URL
        if fault is Fault.BAD_BODY:
            return Outcome.PERMANENT  # damaged every time: not the transfer's fault
    return Outcome.RETRY


@dataclass(frozen=True, slots=True)
class Backoff:
    """When to try again: exponential backoff with jitter, bounded by ``attempts`` tries
    and ``window_s`` seconds from the first (stamina's recipe)."""

    attempts: int = 8
    initial_s: float = 0.5
    max_s: float = 30.0
    window_s: float = RETRY_WINDOW_S

    def allows(self, attempt: int, elapsed_s: float) -> bool:
        """Another try may follow the ``attempt``-th (1-based), ``elapsed_s`` after the
        first began."""
        return attempt < self.attempts and elapsed_s < self.window_s

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempt``-th failed try: the server's
        ``Retry-After`` when it sent one, else exponential with jitter."""
        if retry_after is not None:
            return retry_after
        return self._jittered(self.initial_s, attempt)

    def slot_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempt``-th 429 to a submission: growing from
        ``Retry-After`` (or ``initial_s``) up to :data:`SLOT_BACKOFF_MAX_S`, never below
        ``Retry-After``. A thousand submissions waiting for slots then ask about once
        every half minute each, not every second."""
        base = retry_after if retry_after else self.initial_s
        return max(retry_after or 0.0, _equal_jitter(base, attempt, SLOT_BACKOFF_MAX_S))

    def _jittered(self, base: float, attempt: int) -> float:
        return _equal_jitter(base, attempt, self.max_s)


def _equal_jitter(base: float, attempt: int, cap: float) -> float:
    """Equal jitter: between half and all of ``base * 2**(attempt-1)``, capped at ``cap``
    (never near zero, so a crowd of retries still spreads out without hammering)."""
    top = min(cap, base * 2 ** min(attempt - 1, 30))
    return random.uniform(top / 2, top)
