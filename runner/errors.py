"""The one exception tree of runner.

Everything the runner raises on purpose derives from :class:`RunnerError`. Foreign
exceptions (aiohttp, OSError from sockets, orjson) are translated into this tree in
exactly one place, :mod:`runner.client`; nothing above the client catches ``aiohttp.*``.

::

    RunnerError
    ├── ManifestError          bad manifest, option or configuration   -> exit 2, nothing sent
    ├── FatalApiError          the API refused the account (401/403,    -> exit 3, state saved
    │                          INSUFFICIENT_CREDITS)
    ├── LockedError            another run holds the output folder      -> exit 5
    └── ApiError               one request went wrong
        ├── TransientApiError  429, 5xx, timeouts, resets: retry, honouring ``retry_after``
        │   └── UncertainSubmitError  a submission was sent but its answer was lost
        └── PermanentApiError  400, 404, a hostile or broken answer: fail that job only

Task failures reported by the API (``failCode``) are not exceptions: they are data
(:class:`runner.client.TaskStatus`), classified by :func:`runner.client.classify_fail_code`.
"""

from __future__ import annotations


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

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class LockedError(RunnerError):
    """Another run holds the lock on this output folder."""

    exit_code = 5


class ApiError(RunnerError):
    """One API request failed."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class TransientApiError(ApiError):
    """Worth retrying: rate limited, server trouble, timeout, broken connection.

    ``retry_after`` is the delay in seconds the server asked for, if it said.
    """

    def __init__(
        self, message: str, status: int = 0, code: str = "", retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status, code)


class UncertainSubmitError(TransientApiError):
    """A submission reached the wire but no answer came back: a task may exist unseen."""


class PermanentApiError(ApiError):
    """Retrying will not help: invalid parameters, unknown task, a malformed answer."""
