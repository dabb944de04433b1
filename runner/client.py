"""The APIXO client: the only module that speaks HTTP.

Layers, each with one concern:

* :meth:`ApiClient._send` sends one request through the shared :class:`RequestBudget`
  and translates every foreign exception (aiohttp, sockets, timeouts, bad JSON) into the
  tree of :mod:`runner.errors`. Nothing above this module catches ``aiohttp.*``.
* :meth:`ApiClient._with_retries` retries transient errors, bounded by attempts *and*
  total time, with exponential backoff and full jitter, honouring ``Retry-After``.
* :meth:`ApiClient.submit` / :meth:`ApiClient.status` speak the task API and validate
  its answers: a hostile or broken answer becomes an :class:`~runner.errors.ApiError`
  for that one request, never a crash.
* :meth:`ApiClient.open_file` streams a result URL (no API key is sent there: result
  URLs live on another host).

The key is only ever placed in the ``Authorization`` header of API requests; it is never
part of a message, a log record or an exception.
"""

from __future__ import annotations

import asyncio
import enum
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from .errors import (
    ApiError,
    FatalApiError,
    PermanentApiError,
    TransientApiError,
    UncertainSubmitError,
)
from .limits import RequestBudget

__all__ = [
    "ApiClient",
    "FailClass",
    "FileStream",
    "TaskState",
    "TaskStatus",
    "classify_fail_code",
]

T = TypeVar("T")

_TASK_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_MAX_ANSWER_BYTES = 1 << 20  # an API answer is a few hundred bytes; refuse megabytes
_MAX_RESULT_URLS = 100
_RETRY_AFTER_CAP_S = 300.0


class TaskState(enum.Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "failed"
    UNKNOWN = "unknown"  # a state the API page does not list: not terminal

    @property
    def terminal(self) -> bool:
        return self in (TaskState.SUCCESS, TaskState.FAILED)


class FailClass(enum.Enum):
    PERMANENT = "permanent"
    RETRYABLE = "retryable"
    FATAL = "fatal"


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


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A validated status answer."""

    task_id: str
    state: TaskState
    raw_state: str
    result_urls: tuple[str, ...] = ()
    fail_code: str | None = None
    fail_msg: str | None = None
    create_ms: int | None = None
    complete_ms: int | None = None
    cost_ms: int | None = None


@dataclass(slots=True)
class ClientStats:
    """Request counters for the summary."""

    requests: Counter[str] = field(default_factory=Counter)  # by kind: submit, status, file
    retries: int = 0
    throttled: int = 0  # 429 answers
    errors: Counter[str] = field(default_factory=Counter)  # by status or error kind


@dataclass(slots=True)
class FileStream:
    """An open result-URL response: headers checked, body not yet read."""

    status: int
    offset: int  # first byte the body starts at (non-zero only for a 206)
    total: int | None  # full size of the file if the server said
    content_type: str
    _response: aiohttp.ClientResponse

    async def chunks(self, size: int = 1 << 16) -> AsyncIterator[bytes]:
        """The body, chunk by chunk; transport failures become TransientApiError."""
        try:
            async for chunk in self._response.content.iter_chunked(size):
                yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransientApiError(f"download broke off: {type(exc).__name__}") from None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _RETRY_AFTER_CAP_S)


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object, limit: int = 500) -> str | None:
    if value is None:
        return None
    return str(value)[:limit]


class ApiClient:
    """One aiohttp session for the whole run, sized for ``connections`` parallel requests."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        budget: RequestBudget,
        *,
        attempts: int = 8,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_window_s: float = 600.0,
        request_timeout_s: float = 30.0,
        connections: int = 1100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.budget = budget
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.retry_window_s = retry_window_s
        self.stats = ClientStats()
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=10)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        #: when set (the run is stopping), submissions not yet sent are abandoned unsent
        #: and retries end, so every submission on the wire lands quickly
        self.halt: asyncio.Event | None = None

    async def __aenter__(self) -> ApiClient:
        connector = aiohttp.TCPConnector(
            limit=self._connections, limit_per_host=0, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ApiClient used outside 'async with'")
        return self._session

    # -- layer 1: one request, foreign exceptions translated ---------------------------

    async def _send(self, kind: str, method: str, url: str, body: bytes | None) -> Any:
        """Send one API request and return the ``data`` of a 200 envelope."""
        await self.budget.acquire(urgent=kind == "submit")
        if kind == "submit" and self.halt is not None and self.halt.is_set():
            raise TransientApiError("submit: not sent, the run is stopping")
        self.stats.requests[kind] += 1
        headers = dict(self._auth)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self.session.request(
                method, url, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                raw = await resp.content.read(_MAX_ANSWER_BYTES + 1)
                return self._answer(kind, resp.status, resp.headers, raw)
        except aiohttp.ClientConnectorError:
            # Never connected: the request was certainly not sent.
            self.stats.errors["connect"] += 1
            raise TransientApiError(f"{kind}: cannot connect to the API") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # The connection broke or timed out after the request may have left.
            self.stats.errors[type(exc).__name__] += 1
            message = f"{kind}: the connection broke before an answer came back"
            if kind == "submit":
                raise UncertainSubmitError(message) from None
            raise TransientApiError(message) from None

    def _answer(self, kind: str, status: int, headers: Mapping[str, str], raw: bytes) -> Any:
        if status != 200:
            self.stats.errors[str(status)] += 1
        message, code = self._envelope_error(raw)
        if status == 429:
            self.stats.throttled += 1
            retry_after = _retry_after(headers)
            self.budget.throttle(retry_after)
            raise TransientApiError(
                f"{kind}: rate or concurrency limit (429)", 429, retry_after=retry_after
            )
        if status in (401, 403):
            raise FatalApiError(
                f"the API refused the key ({status}): {message or 'no reason given'}; "
                "check the key's value and its balance",
                status,
            )
        if status >= 500:
            raise TransientApiError(f"{kind}: server error {status}", status)
        if status == 404:
            raise PermanentApiError(f"{kind}: not found (404): {message}", 404, "NOT_FOUND")
        if status != 200:
            raise PermanentApiError(f"{kind}: rejected ({status}): {message}", status, code)
        if len(raw) > _MAX_ANSWER_BYTES:
            raise self._bad(kind, "answer too large")
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise self._bad(kind, "answer is not JSON") from None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("data"), dict):
            raise self._bad(kind, "answer has no data object")
        return envelope["data"]

    @staticmethod
    def _envelope_error(raw: bytes) -> tuple[str, str]:
        """Best-effort message and field name from an error envelope."""
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return "", ""
        if not isinstance(envelope, dict):
            return "", ""
        message = _text(envelope.get("message"), 300) or ""
        data = envelope.get("data")
        error = _text(data.get("error"), 200) if isinstance(data, dict) else None
        if error:
            message = f"{message} ({error})" if message else error
        return message, str(error or "")

    @staticmethod
    def _bad(kind: str, why: str) -> ApiError:
        # A 200 whose body cannot be read: for a submission the task may exist, so the
        # outcome is unknown; the engine fails that one job rather than paying again.
        return PermanentApiError(f"{kind}: malformed answer: {why}", 200, "BAD_ANSWER")

    # -- layer 2: retries --------------------------------------------------------------

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except UncertainSubmitError:
                raise  # the engine must record it before anything is sent again
            except TransientApiError as exc:
                elapsed = time.monotonic() - started
                halted = self.halt is not None and self.halt.is_set()
                if attempt >= self.attempts or elapsed >= self.retry_window_s or halted:
                    raise
                delay = exc.retry_after
                if delay is None:
                    cap = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                    delay = random.uniform(cap / 2, cap)
                self.stats.retries += 1
                await asyncio.sleep(delay)

    # -- layer 3: the task API ---------------------------------------------------------

    async def submit(self, payload: Mapping[str, Any]) -> str:
        """Create a task from a full request body; return its taskId.

        Raises UncertainSubmitError when the request may have been sent but no answer
        came back (a task may exist that no one will ever see)."""
        url = f"{self.base_url}/generateTask/{quote(self.model, safe='')}"
        body = orjson.dumps(payload)

        async def once() -> str:
            data = await self._send("submit", "POST", url, body)
            task_id = data.get("taskId")
            if (
                not isinstance(task_id, str)
                or not _TASK_ID.match(task_id)
                or task_id
                in {
                    ".",
                    "..",
                }
            ):
                raise self._bad("submit", "no usable taskId")
            return task_id

        return await self._with_retries(once)

    async def status(self, task_id: str) -> TaskStatus:
        """Poll one task."""
        url = f"{self.base_url}/statusTask/{quote(self.model, safe='')}?taskId={quote(task_id)}"

        async def once() -> TaskStatus:
            data = await self._send("status", "GET", url, None)
            return parse_status(data, task_id)

        return await self._with_retries(once)

    # -- result files --------------------------------------------------------------------

    @asynccontextmanager
    async def open_file(self, url: str, offset: int = 0) -> AsyncIterator[FileStream]:
        """Open a result URL for streaming, from ``offset`` when resuming."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        self.stats.requests["file"] += 1
        # Exceptions thrown into the ``yield`` come from the caller (writing the file to a
        # full disk, say): they are not the server's doing and must not be translated.
        in_caller = False
        try:
            async with self.session.get(
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
            ) as resp:
                if resp.status in (404, 410, 403):
                    raise PermanentApiError(
                        f"result URL answered {resp.status} (expired?)", resp.status, "URL_EXPIRED"
                    )
                if resp.status == 416 and offset:
                    # The partial file is already whole (or longer): start over.
                    raise TransientApiError("range not satisfiable", 416, "RANGE")
                if resp.status == 429 or resp.status >= 500:
                    raise TransientApiError(
                        f"result URL answered {resp.status}",
                        resp.status,
                        retry_after=_retry_after(resp.headers),
                    )
                if resp.status not in (200, 206):
                    raise PermanentApiError(
                        f"result URL answered {resp.status}", resp.status, "DOWNLOAD_FAILED"
                    )
                start, total = 0, resp.content_length
                if resp.status == 206:
                    start, total = _content_range(resp.headers.get("Content-Range", ""))
                in_caller = True
                yield FileStream(
                    resp.status, start, total, resp.headers.get("Content-Type", ""), resp
                )
                in_caller = False
        except ApiError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if in_caller:
                raise
            raise TransientApiError(f"download failed: {type(exc).__name__}") from None


def _content_range(value: str) -> tuple[int, int | None]:
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", value.strip())
    if not match:
        raise TransientApiError("206 answer without a usable Content-Range")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def parse_status(data: Mapping[str, Any], task_id: str) -> TaskStatus:
    """Validate a status ``data`` object (from a poll or a webhook)."""
    if data.get("taskId") not in (None, task_id):
        raise PermanentApiError("status: answer is for another task", 200, "BAD_ANSWER")
    raw_state = data.get("state")
    if not isinstance(raw_state, str):
        raise PermanentApiError("status: answer has no state", 200, "BAD_ANSWER")
    try:
        state = TaskState(raw_state)
    except ValueError:
        state = TaskState.UNKNOWN
    urls: tuple[str, ...] = ()
    if state is TaskState.SUCCESS:
        urls = _result_urls(data.get("resultJson"))
    fail_code = fail_msg = None
    if state is TaskState.FAILED:
        fail_code = _text(data.get("failCode"), 100) or "UNKNOWN_FAILURE"
        fail_msg = _text(data.get("failMsg"), 500) or ""
    return TaskStatus(
        task_id=task_id,
        state=state,
        raw_state=raw_state[:40],
        result_urls=urls,
        fail_code=fail_code,
        fail_msg=fail_msg,
        create_ms=_opt_int(data.get("createTime")),
        complete_ms=_opt_int(data.get("completeTime")),
        cost_ms=_opt_int(data.get("costTime")),
    )


def _result_urls(result_json: object) -> tuple[str, ...]:
    bad = PermanentApiError("status: resultJson is not usable", 200, "BAD_ANSWER")
    if not isinstance(result_json, str):
        raise bad
    try:
        result = orjson.loads(result_json)
    except orjson.JSONDecodeError:
        raise bad from None
    urls = result.get("resultUrls") if isinstance(result, dict) else None
    if not isinstance(urls, list) or not urls or len(urls) > _MAX_RESULT_URLS:
        raise bad
    for url in urls:
        if not isinstance(url, str) or len(url) > 4096:
            raise bad
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise bad
    return tuple(urls)
