"""The API's answers, validated: what a status answer (or a webhook) says, and the
error the outcome policy gives an answer that cannot be used.

Nothing here sends a request or knows aiohttp: :mod:`runner.api.client` speaks HTTP and
hands what came back to these functions; :mod:`runner.api.callback` hands them a webhook.
A hostile or broken answer becomes an :class:`~runner.errors.ApiError` for that one
request (code ``BAD_ANSWER``), never a crash.

Owns: the shape of a good answer. Must not know: HTTP, retries, jobs.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from runner.errors import ApiError, FatalApiError, api_error

from .outcome import Fault, Request, classify

__all__ = [
    "TaskState",
    "TaskStatus",
    "clipped",
    "parse_content_range",
    "parse_retry_after",
    "parse_status",
    "policy_error",
    "unreadable",
]

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


def policy_error(
    request: Request,
    fault: Fault,
    message: str,
    status: int = 0,
    code: str = "",
    retry_after: float | None = None,
) -> ApiError | FatalApiError:
    """The error the outcome policy gives this fault of this request."""
    outcome = classify(request, fault, status, code)
    return api_error(outcome, message, status, code, retry_after, fault=fault)


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the server asked to wait (``Retry-After``: seconds, or an HTTP date compared
    with ``now``, wall seconds), capped; None when it did not say."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _RETRY_AFTER_CAP_S)


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def clipped(value: object, limit: int = 500) -> str | None:
    if value is None:
        return None
    return str(value)[:limit]


def parse_content_range(value: str) -> tuple[int, int | None]:
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", value.strip())
    if not match:
        raise policy_error(
            Request.FILE, Fault.BAD_BODY, "206 answer without a usable Content-Range"
        )
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def unreadable(request: Request, why: str) -> ApiError | FatalApiError:
    """A 200 whose body cannot be used (code BAD_ANSWER): for a submission the task may
    exist (UNCERTAIN), a status is asked for again (RETRY), a webhook is refused."""
    message = f"{request.value}: malformed answer: {why}"
    return policy_error(request, Fault.UNREADABLE, message, 200, "BAD_ANSWER")


def parse_status(
    data: Mapping[str, Any], task_id: str, request: Request = Request.STATUS
) -> TaskStatus:
    """Validate a status ``data`` object from a poll (``request`` STATUS) or a webhook
    (WEBHOOK); an unusable one raises the policy's error for that request."""
    if data.get("taskId") not in (None, task_id):
        raise unreadable(request, "answer is for another task")
    raw_state = data.get("state")
    if not isinstance(raw_state, str):
        raise unreadable(request, "answer has no state")
    try:
        state = TaskState(raw_state)
    except ValueError:
        state = TaskState.UNKNOWN
    urls: tuple[str, ...] = ()
    if state is TaskState.SUCCESS:
        urls = _result_urls(data.get("resultJson"), request)
    fail_code = fail_msg = None
    if state is TaskState.FAILED:
        fail_code = clipped(data.get("failCode"), 100) or "UNKNOWN_FAILURE"
        fail_msg = clipped(data.get("failMsg"), 500) or ""
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


def _result_urls(result_json: object, request: Request) -> tuple[str, ...]:
    def bad() -> ApiError | FatalApiError:  # built only when needed: most answers are good
        return unreadable(request, "resultJson is not usable")

    if not isinstance(result_json, str):
        raise bad()
    try:
        result = orjson.loads(result_json)
    except orjson.JSONDecodeError:
        raise bad() from None
    urls = result.get("resultUrls") if isinstance(result, dict) else None
    if not isinstance(urls, list) or not urls or len(urls) > _MAX_RESULT_URLS:
        raise bad()
    for url in urls:
        if not isinstance(url, str) or len(url) > 4096:
            raise bad()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise bad()
    return tuple(urls)
