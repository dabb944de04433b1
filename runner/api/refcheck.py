"""``--check-images``: every reference image a campaign uses, looked at before anything is spent.

The API fetches each ``image_urls`` entry itself when a task starts, and a task whose
reference image it cannot use fails after it was submitted. :func:`check_images` asks
each distinct URL first, with no key (the API key never goes to image hosts): a ``HEAD``
request, or a one-byte ranged ``GET`` where ``HEAD`` is refused (some signed URLs allow
only ``GET``). A URL is a problem when it:

- cannot be reached (connection refused, DNS, TLS), gives no answer within
  :data:`TIMEOUT_S`, or answers an error status (404, 403, ...);
- is served with a ``Content-Type`` other than a JPG, PNG or WebP image (``text/html``
  is a login or error page; ``image/gif`` is refused by the API). A missing type and the
  generic ``application/octet-stream`` pass: only the API's decoder can tell then;
- is larger than :data:`MAX_IMAGE_BYTES` by its ``Content-Length`` (or the total of a
  ``Content-Range``); an unannounced size passes.

At most :data:`CONCURRENCY` URLs are asked at once. Every problem is listed in one
:class:`~runner.errors.ManifestError` (exit 2, nothing sent), each at the first job that
uses the URL: ``campaign.yaml:14: jobs[3] (id hero) image_urls[0]``. This module makes
its own requests to hosts that are not the API, so it translates aiohttp's exceptions
itself, into that one message.

Owns: the check. Must not know: the API and its key, the ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from runner.errors import ManifestError
from runner.manifest.campaign import Campaign

__all__ = ["CONCURRENCY", "MAX_IMAGE_BYTES", "TIMEOUT_S", "check_images"]

#: URLs asked at once
CONCURRENCY = 16
#: seconds for each request (HEAD, then the ranged GET if HEAD is refused)
TIMEOUT_S = 10.0
#: the API's limit per reference image, "10 MB"
MAX_IMAGE_BYTES = 10 * 1024 * 1024
#: problems listed in the message; the rest are counted
_MAX_LISTED = 20
_IMAGE_TYPES = frozenset({"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/webp"})
_UNKNOWN_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    reason: str
    content_type: str
    size: int | None


def _size(status: int, headers: Mapping[str, str]) -> int | None:
    """The whole resource's size: a 206's ``Content-Range`` total, else ``Content-Length``."""
    if status == 206:
        total = headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


async def _ask(session: aiohttp.ClientSession, url: str) -> _Answer:
    """HEAD, or a one-byte GET when HEAD answers an error; the answer that counts."""
    async with session.head(url, allow_redirects=True) as resp:
        if resp.status < 400:
            ctype = resp.headers.get("Content-Type", "")
            return _Answer(resp.status, resp.reason or "", ctype, _size(resp.status, resp.headers))
    async with session.get(url, headers={"Range": "bytes=0-0"}) as resp:
        ctype = resp.headers.get("Content-Type", "")
        return _Answer(resp.status, resp.reason or "", ctype, _size(resp.status, resp.headers))


def _judge(answer: _Answer) -> str | None:
    """What is wrong with the image behind this answer, None when nothing is known to be."""
    if answer.status >= 400:
        return f"answered {answer.status} {answer.reason}".rstrip()
    mime = answer.content_type.partition(";")[0].strip().lower()
    if mime not in _IMAGE_TYPES and mime not in _UNKNOWN_TYPES:
        return f"is served as {mime}, not a JPG, PNG or WebP image"
    if answer.size is not None and answer.size > MAX_IMAGE_BYTES:
        return f"is {answer.size:,} bytes; the API takes at most 10 MB ({MAX_IMAGE_BYTES:,} bytes)"
    return None


async def _problem(session: aiohttp.ClientSession, url: str) -> str | None:
    try:
        return _judge(await _ask(session, url))
    except TimeoutError:
        return f"gave no answer within {TIMEOUT_S:g} s"
    except aiohttp.ClientConnectorError as exc:
        return f"cannot be reached ({exc.os_error.strerror or exc.os_error})"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        detail = f": {exc}" if str(exc) else ""
        return f"cannot be fetched ({type(exc).__name__}{detail})"


def _image_urls(campaign: Campaign) -> dict[str, str]:
    """Each distinct reference image URL -> the place of the first job using it."""
    first: dict[str, str] = {}
    for job in campaign.jobs():
        urls = job.input.get("image_urls")
        if not isinstance(urls, list):
            continue
        for i, url in enumerate(urls):
            if isinstance(url, str) and url not in first:
                first[url] = f"{job.where} (id {job.id}) image_urls[{i}]"
    return first


async def check_images(campaign: Campaign) -> int:
    """Ask every distinct reference image URL of ``campaign``; return how many were asked.

    Raises ManifestError listing each problem at the first job using the URL."""
    places = _image_urls(campaign)
    problems: dict[str, str] = {}
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        try:
            problem = await _problem(session, url)
        finally:
            slots.release()
        if problem is not None:
            problems[url] = problem

    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S, sock_connect=TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    session = aiohttp.ClientSession(timeout=timeout, connector=connector)
    async with session, asyncio.TaskGroup() as group:
        for url in places:
            await slots.acquire()  # before the task: memory follows CONCURRENCY
            group.create_task(one(session, url))
    if problems:
        raise _error([(places[url], url, problems[url]) for url in places if url in problems])
    return len(places)


def _error(found: list[tuple[str, str, str]]) -> ManifestError:
    advice = (
        f"fix or replace {'it' if len(found) == 1 else 'them'} (JPG, PNG or WebP, at most "
        "10 MB, reachable without a key), then run again; nothing was sent"
    )
    if len(found) == 1:
        place, url, problem = found[0]
        return ManifestError(f"reference image {url} {problem}; {advice}", place)
    lines = [f"  {place}: {url} {problem}" for place, url, problem in found[:_MAX_LISTED]]
    if len(found) > _MAX_LISTED:
        lines.append(f"  ... and {len(found) - _MAX_LISTED} more")
    head = f"{len(found)} reference images cannot be used ({advice}):"
    return ManifestError("\n".join([head, *lines]))
