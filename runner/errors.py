"""The one exception tree of runner.

Everything the runner raises on purpose derives from :class:`RunnerError`. Foreign
exceptions (aiohttp, OSError from sockets, orjson) are translated into this tree in
exactly one place, :mod:`runner.api.client`; nothing above the client catches
``aiohttp.*``.

An API error is raised as the class of its :class:`Outcome`, decided by the outcome
policy (:func:`runner.api.outcome.classify`) and built by :func:`api_error`; each
carries ``outcome`` (what to do) and ``fault`` (what happened), so callers act on those,
never on status numbers or code strings. ``code`` is what the ledger records.

::

    RunnerError
    ├── ManifestError          bad manifest, option or configuration   -> exit 2, nothing sent
    ├── FatalApiError          FATAL: the API refused the account       -> exit 3, state saved
    │                          (401/403, INSUFFICIENT_CREDITS)
    ├── LockedError            another run holds the output folder      -> exit 5
    │   └── LockLostError      ... took it over from this run (its heartbeat had stopped)
    └── ApiError               one request went wrong
        ├── TransientApiError  RETRY: 5xx, timeouts, resets, a status answer that cannot
        │   │                  be read, a short download; retry, honouring ``retry_after``
        │   ├── SlotBusyError  WAIT_SLOT: 429 to a submission; no task was created, wait
        │   │                  for a slot
        │   └── UncertainSubmitError  UNCERTAIN: a submission may have created a task
        │                      (5xx, timeout or reset after sending, an unreadable 200)
        └── PermanentApiError  PERMANENT: 400, an unusable download: fail that job only
            └── LostError      LOST: the job's paid images are gone (URL_EXPIRED,
                               TASK_GONE)

Task failures reported by the API (``failCode``) are not exceptions: they are data
(:class:`runner.api.answers.TaskStatus`), classified by
:func:`runner.api.outcome.classify_fail_code`.

Owns: the tree, the vocabulary its API errors carry (:class:`Outcome`, :class:`Fault`)
and each error's exit code. Must not know: which answer gives which outcome (the
policy's table), anything above it.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Outcome(enum.Enum):
    """What one answer means for the job that asked."""

    RETRY = "retry"  # transient: try again after a delay
    #: a submission refused with 429 (the live-task limit or the rate): certainly no task
    #: was created; wait for a slot without counting against ``retry.attempts``
    WAIT_SLOT = "wait_slot"
    #: a submission may have created (and paid for) a task that nobody will ever see
    UNCERTAIN = "uncertain"
    PERMANENT = "permanent"  # this job fails; the run goes on
    LOST = "lost"  # the job's paid images are gone (URL expired, task gone)
    FATAL = "fatal"  # the account is refused: stop the run


class Fault(enum.Enum):
    """What went wrong with one request, as observed."""

    #: the request certainly did not leave: no connection could be made, or the run is
    #: stopping and it was held back
    NOT_SENT = "not_sent"
    #: the connection broke or timed out after the request may have left
    CONNECTION_LOST = "connection_lost"
    STATUS = "status"  # the server answered with an HTTP error status
    UNREADABLE = "unreadable"  # a 200 whose body cannot be used
    SHORT_BODY = "short_body"  # a download ended before its announced length
    #: the bytes on disk cannot be continued (a refused range, a body that is not a
    #: whole image): start the download over
    BAD_BODY = "bad_body"
    TOO_LARGE = "too_large"  # a download over the size cap

    @property
    def spoils_partial(self) -> bool:
        """A download's partial file must be thrown away, not continued."""
        return self is Fault.BAD_BODY


class RunnerError(Exception):
    """Base of every error runner raises on purpose."""

    exit_code = 1


class ManifestError(RunnerError):
    """The manifest, an option or the configuration is wrong. Nothing has been sent.

    ``where`` names the file and the line or key path; the message says what is allowed.
    """

    exit_code = 2

    def __init__(self, message: str, where: str = "") -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class FatalApiError(RunnerError):
    """The API refused the account: bad key, no permission, no credits. Stop the run."""

    exit_code = 3
    outcome: ClassVar[Outcome] = Outcome.FATAL

    def __init__(
        self, message: str, status: int = 0, code: str = "", *, fault: Fault = Fault.STATUS
    ) -> None:
        self.status = status
        self.code = code
        self.fault = fault
        super().__init__(message)


class LockedError(RunnerError):
    """Another run holds the lock on this output folder."""

    exit_code = 5


class LockLostError(LockedError):
    """Another run took over this run's folder lock (a file lock whose heartbeat had
    stopped for too long): this run stopped at once, after it had started working."""


class ApiError(RunnerError):
    """One API request (or result download) failed. ``outcome`` says what it means for
    the job, ``fault`` what happened; ``retry_after`` is the delay in seconds the server
    asked for, if it said."""

    outcome: ClassVar[Outcome] = Outcome.PERMANENT

    def __init__(
        self,
        message: str,
        status: int = 0,
        code: str = "",
        retry_after: float | None = None,
        *,
        fault: Fault = Fault.STATUS,
    ) -> None:
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.fault = fault
        super().__init__(message)


class TransientApiError(ApiError):
    """Worth retrying: server trouble, timeout, broken connection, an unreadable status
    answer, a short download."""

    outcome: ClassVar[Outcome] = Outcome.RETRY


class SlotBusyError(TransientApiError):
    """A submission was refused with 429 (the live-task limit or the rate; the API does
    not say which): certainly no task was created. Wait for a slot and send it again."""

    outcome: ClassVar[Outcome] = Outcome.WAIT_SLOT


class UncertainSubmitError(TransientApiError):
    """A submission may have created a task that nobody will ever see: the connection
    broke or timed out after it was sent, a 5xx answered it, or its 200 was unreadable."""

    outcome: ClassVar[Outcome] = Outcome.UNCERTAIN


class PermanentApiError(ApiError):
    """Retrying will not help: invalid parameters, an unusable download."""

    outcome: ClassVar[Outcome] = Outcome.PERMANENT


class LostError(PermanentApiError):
    """The job's paid images are gone for good: the result URLs expired (and polling the
    task gave no fresh ones), or the API no longer knows the task."""

    outcome: ClassVar[Outcome] = Outcome.LOST


_CLASSES: dict[Outcome, type[ApiError]] = {
    Outcome.RETRY: TransientApiError,
    Outcome.WAIT_SLOT: SlotBusyError,
    Outcome.UNCERTAIN: UncertainSubmitError,
    Outcome.PERMANENT: PermanentApiError,
    Outcome.LOST: LostError,
}


def api_error(
    outcome: Outcome,
    message: str,
    status: int = 0,
    code: str = "",
    retry_after: float | None = None,
    *,
    fault: Fault = Fault.STATUS,
) -> ApiError | FatalApiError:
    """The error of ``outcome`` (the class in the module's tree)."""
    if outcome is Outcome.FATAL:
        return FatalApiError(message, status, code, fault=fault)
    return _CLASSES[outcome](message, status, code, retry_after, fault=fault)
