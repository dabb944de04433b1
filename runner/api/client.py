"""The APIXO client: the one way requests reach the API and its result hosts.

Layers, each with one concern:

* :meth:`ApiClient._send` sends one request through the shared
  :class:`~runner.api.limits.RequestGate` and translates every foreign exception
  (aiohttp, sockets, timeouts, bad JSON) into the tree of :mod:`runner.errors`, as the
  error of the outcome :func:`runner.api.outcome.classify` gives it. Nothing above this
  module catches ``aiohttp.*`` or looks at a status number.
* :meth:`ApiClient._with_retries` retries what the policy calls RETRY, bounded by
  attempts *and* total time, with exponential backoff and jitter, honouring
  ``Retry-After`` (:class:`runner.api.outcome.Backoff`); any other outcome is raised at once.
* :meth:`ApiClient.submit` / :meth:`ApiClient.status` speak the task API and validate
  its answers: a hostile or broken answer becomes an :class:`~runner.errors.ApiError`
  for that one request, never a crash.
* :meth:`ApiClient.open_file` streams a result URL (no API key is sent there: result
  URLs live on another host).

The key is only ever placed in the ``Authorization`` header of API requests; it is never
part of a message, a log record or an exception.

Owns: requests to the API and to result hosts, their retries and their statistics.
Must not know: jobs, the ledger, what an outcome leads to for a job.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson

from runner.errors import ApiError, Fault, Outcome

from .answers import (
    TaskStatus,
    clipped,
    parse_content_range,
    parse_retry_after,
    parse_status,
    policy_error,
    unreadable,
)
from .limits import RequestGate
from .outcome import RETRY_WINDOW_S, Backoff, Request

__all__ = ["ApiClient", "ClientStats", "FileStream"]

T = TypeVar("T")

_TASK_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_MAX_ANSWER_BYTES = 1 << 20  # an API answer is a few hundred bytes; refuse megabytes
#: a result file's read buffer: aiohttp stops reading the socket at twice this until the
#: reader catches up; its default (64 KiB) pauses and resumes a 1 MB image several times
_FILE_READ_BUFFER = 1 << 18
_FILE_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)


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

    async def chunks(self, size: int | None = None) -> AsyncIterator[bytes]:
        """The body, chunk by chunk: of ``size`` bytes, or (None) as they came off the
        socket, with no copy; a transport failure becomes the policy's error for a lost
        connection (RETRY)."""
        content = self._response.content
        body = content.iter_any() if size is None else content.iter_chunked(size)
        try:
            async for chunk in body:
                yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise policy_error(
                Request.FILE, Fault.CONNECTION_LOST, f"download broke off: {type(exc).__name__}"
            ) from None


class ApiClient:
    """One aiohttp session for the whole run, sized for ``connections`` parallel requests."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        gate: RequestGate,
        *,
        attempts: int = 8,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_window_s: float = RETRY_WINDOW_S,
        request_timeout_s: float = 30.0,
        connections: int = 1100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.gate = gate
        self.clock = gate.clock
        #: how RETRY outcomes are retried: ``attempts`` tries per request
        self.backoff = Backoff(attempts, backoff_s, backoff_max_s, retry_window_s)
        self.stats = ClientStats()
        # The headers of API requests, built once (aiohttp copies them, never changes them)
        self._get_headers = {"Authorization": f"Bearer {api_key}"}
        self._post_headers = {**self._get_headers, "Content-Type": "application/json"}
        model_path = quote(model, safe="")
        self._submit_url = f"{self.base_url}/generateTask/{model_path}"
        self._status_url = f"{self.base_url}/statusTask/{model_path}?taskId="
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

    async def _send(self, request: Request, method: str, url: str, body: bytes | None) -> Any:
        """Send one API request and return the ``data`` of a 200 envelope."""
        kind = request.value
        submit = request is Request.SUBMIT
        await self.gate.acquire(urgent=submit)
        if submit and self.halt is not None and self.halt.is_set():
            raise policy_error(request, Fault.NOT_SENT, "submit: not sent, the run is stopping")
        self.stats.requests[kind] += 1
        headers = self._get_headers if body is None else self._post_headers
        try:
            async with self.session.request(
                method, url, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                raw = await resp.content.read(_MAX_ANSWER_BYTES + 1)
                return self._answer(request, resp.status, resp.headers, raw)
        except aiohttp.ClientConnectorError:
            # Never connected: the request was certainly not sent.
            self.stats.errors["connect"] += 1
            raise policy_error(
                request, Fault.NOT_SENT, f"{kind}: cannot connect to the API"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # The connection broke or timed out after the request may have left.
            self.stats.errors[type(exc).__name__] += 1
            raise policy_error(
                request,
                Fault.CONNECTION_LOST,
                f"{kind}: the connection broke before an answer came back",
            ) from None

    def _answer(self, request: Request, status: int, headers: Mapping[str, str], raw: bytes) -> Any:
        kind = request.value
        if status != 200:
            self.stats.errors[str(status)] += 1
            message, code = self._envelope_error(raw)
            retry_after = parse_retry_after(headers, self.clock.wall()) if status == 429 else None
            if status == 429:
                self.stats.throttled += 1
                if request is not Request.SUBMIT:
                    # A 429 to a submission may be the live-task limit, which slowing the
                    # polls (that free slots) would only prolong; the submission waits
                    # with its own backoff instead.
                    self.gate.throttle(retry_after)
                text = f"{kind}: rate or concurrency limit (429)"
            elif status in (401, 403):
                text = (
                    f"the API refused the key ({status}): {message or 'no reason given'}; "
                    "check the key's value and its balance"
                )
            elif status >= 500:
                text = f"{kind}: server error {status}"
            elif status == 404:
                text = f"{kind}: not found (404): {message}"
                code = "TASK_GONE" if request is Request.STATUS else "NOT_FOUND"
            else:
                text = f"{kind}: rejected ({status}): {message}"
            raise policy_error(request, Fault.STATUS, text, status, code, retry_after)
        if len(raw) > _MAX_ANSWER_BYTES:
            raise unreadable(request, "answer too large")
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise unreadable(request, "answer is not JSON") from None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("data"), dict):
            raise unreadable(request, "answer has no data object")
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
        message = clipped(envelope.get("message"), 300) or ""
        data = envelope.get("data")
        error = clipped(data.get("error"), 200) if isinstance(data, dict) else None
        if error:
            message = f"{message} ({error})" if message else error
        return message, str(error or "")

    # -- layer 2: retries --------------------------------------------------------------

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until it returns; an error whose outcome is RETRY is tried again
        while the backoff allows (and the run is not stopping), any other is raised."""
        started = self.clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except ApiError as exc:
                if exc.outcome is not Outcome.RETRY:
                    raise
                halted = self.halt is not None and self.halt.is_set()
                if halted or not self.backoff.allows(attempt, self.clock.monotonic() - started):
                    raise
                self.stats.retries += 1
                await self.clock.sleep(self.backoff.delay(attempt, exc.retry_after))

    # -- layer 3: the task API ---------------------------------------------------------

    async def submit(self, payload: Mapping[str, Any]) -> str:
        """Create a task from a full request body; return its taskId.

        Only tries that certainly created nothing (no connection) are retried here. Raises
        the error of any other outcome at once, so the caller records it before anything
        is sent again: UNCERTAIN (a task may exist that no one will ever see), WAIT_SLOT
        (429), PERMANENT, FATAL; or RETRY once the retries are spent."""
        url = self._submit_url
        body = orjson.dumps(payload)

        async def once() -> str:
            data = await self._send(Request.SUBMIT, "POST", url, body)
            task_id = data.get("taskId")
            if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
                raise unreadable(Request.SUBMIT, "no usable taskId")
            if task_id in (".", ".."):
                raise unreadable(Request.SUBMIT, "no usable taskId")
            return task_id

        return await self._with_retries(once)

    async def status(self, task_id: str) -> TaskStatus:
        """Poll one task. An answer that cannot be read is asked for again (RETRY); a 404
        raises LOST (TASK_GONE): the API no longer knows the task."""
        url = self._status_url + quote(task_id)

        async def once() -> TaskStatus:
            data = await self._send(Request.STATUS, "GET", url, None)
            return parse_status(data, task_id)

        return await self._with_retries(once)

    # -- result files --------------------------------------------------------------------

    @asynccontextmanager
    async def open_file(self, url: str, offset: int = 0) -> AsyncIterator[FileStream]:
        """Open a result URL for streaming, from ``offset`` when resuming. An expired or
        vanished URL (403, 404, 410) raises LOST with code URL_EXPIRED."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        self.stats.requests["file"] += 1
        file = Request.FILE
        # Exceptions thrown into the ``yield`` come from the caller (writing the file to a
        # full disk, say): they are not the server's doing and must not be translated.
        in_caller = False
        try:
            async with self.session.get(
                url, headers=headers, timeout=_FILE_TIMEOUT, read_bufsize=_FILE_READ_BUFFER
            ) as resp:
                status = resp.status
                if status == 416 and offset:
                    # The partial file is already whole (or longer): start over.
                    raise policy_error(file, Fault.BAD_BODY, "range not satisfiable", 416, "RANGE")
                if status not in (200, 206):
                    gone = status in (403, 404, 410)
                    code = "URL_EXPIRED" if gone else "DOWNLOAD_FAILED"
                    text = f"result URL answered {status}" + (" (expired?)" if gone else "")
                    retry_after = parse_retry_after(resp.headers, self.clock.wall())
                    raise policy_error(file, Fault.STATUS, text, status, code, retry_after)
                start, total = 0, resp.content_length
                if status == 206:
                    start, total = parse_content_range(resp.headers.get("Content-Range", ""))
                in_caller = True
                yield FileStream(status, start, total, resp.headers.get("Content-Type", ""), resp)
                in_caller = False
        except ApiError:
            raise
        except aiohttp.ClientConnectorError:
            if in_caller:
                raise
            self.stats.errors["connect"] += 1
            raise policy_error(
                file, Fault.NOT_SENT, "cannot connect to the result URL's host"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if in_caller:
                raise
            raise policy_error(
                file, Fault.CONNECTION_LOST, f"download failed: {type(exc).__name__}"
            ) from None
