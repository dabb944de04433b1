"""Serving one result image: checking its URL, ranges, and the download faults.

Contract of :func:`find_file`: the task and image index a file URL names, or the status
to answer instead: 404 for an unknown or forged URL (or a task not finished yet), 410 for
a genuine URL whose ``exp`` has passed or whose task is gone (``retention_s``).

Contract of :func:`serve_file` (the URL is already checked):

* ``200`` with the whole PNG, ``Content-Type: image/png``, ``Content-Length`` and
  ``Accept-Ranges: bytes``; ``HEAD`` gives the same headers without a body.
* A single ``Range: bytes=N-``, ``bytes=N-M`` or ``bytes=-N`` answers ``206`` with
  ``Content-Range``; a range starting past the end answers ``416``. Several ranges or a
  malformed header are ignored (whole file), as RFC 9110 allows.
* ``p_truncate``: the headers announce the full length, about half the body is sent, then
  the connection is closed. ``p_corrupt``: the PNG signature is kept and every later byte
  replaced, same length, so only a client that checks the content notices.
* ``p_wrong_type``: the right bytes labelled ``text/plain``. ``p_html``: a 200 with an HTML
  error page instead of the image. ``p_oversize``: ``Content-Length`` announces 1 GiB, a
  little is sent, then the connection is closed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

from aiohttp import web

from runner.sim.config import SimConfig
from runner.sim.stats import SimStats
from runner.sim.tasks import SUCCESS, Task
from runner.sim.urls import UrlSigner

_SIGNATURE_LEN = 8


def parse_range(header: str | None, total: int) -> tuple[int, int] | str | None:
    """``(start, end_inclusive)``, ``None`` for the whole file, or ``"unsatisfiable"``."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, dash, last = header[6:].strip().partition("-")
    if not dash:
        return None
    if not first:  # suffix range: the last N bytes
        if not last.isdigit() or int(last) == 0:
            return None
        return max(0, total - int(last)), total - 1
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = min(int(last), total - 1) if last else total - 1
    if start >= total:
        return "unsatisfiable"
    if end < start:
        return None
    return start, end


def find_file(
    request: web.Request, tasks: Mapping[str, Task], signer: UrlSigner, retention_ms: float
) -> tuple[Task, int] | int:
    """``(task, index)`` or 404 or 410; see the module docstring."""
    task = tasks.get(request.match_info["task_id"])
    index_text, dot, ext = request.match_info["name"].partition(".")
    if task is None or ext != "png" or not dot or not index_text.isdigit():
        return 404
    index = int(index_text)
    exp_ms = signer.verify(
        task.task_id, index, request.query.get("exp", ""), request.query.get("sig", "")
    )
    if exp_ms is None:
        return 404
    now_ms = time.time() * 1000
    if task.gone_at(now_ms, retention_ms) or now_ms >= exp_ms:
        return 410
    if task.state_at(now_ms) != SUCCESS or index >= task.n_images:
        return 404
    return task, index


def _corrupt(data: bytes, rng: random.Random) -> bytes:
    return data[:_SIGNATURE_LEN] + rng.randbytes(len(data) - _SIGNATURE_LEN)


async def serve_file(
    request: web.Request,
    task: Task,
    index: int,
    config: SimConfig,
    rng: random.Random,
    stats: SimStats,
) -> web.StreamResponse:
    """Answer a GET or HEAD for image ``index`` of ``task``; see the module docstring."""
    data = task.png(index)
    total = len(data)
    headers = {"Content-Type": "image/png", "Accept-Ranges": "bytes"}
    wanted = parse_range(request.headers.get("Range"), total)
    if wanted == "unsatisfiable":
        stats.requests["file", 416] += 1
        headers["Content-Range"] = f"bytes */{total}"
        return web.Response(status=416, headers=headers)
    status = 200
    if isinstance(wanted, tuple):
        start, end = wanted
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
    else:
        start, end = 0, total - 1
    stats.requests["file", status] += 1
    if request.method == "HEAD":  # aiohttp sends the headers of this body, not the body
        return web.Response(status=status, body=data[start : end + 1], headers=headers)
    if config.p_corrupt and rng.random() < config.p_corrupt:
        stats.faults["corrupt"] += 1
        data = _corrupt(data, rng)
    body = data[start : end + 1]
    if config.p_wrong_type and rng.random() < config.p_wrong_type:
        stats.faults["wrong_type"] += 1
        headers["Content-Type"] = "text/plain"
    if config.p_html and rng.random() < config.p_html:
        stats.faults["html"] += 1
        page = b"<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>\n"
        return web.Response(status=200, body=page, content_type="text/html")
    if config.p_oversize and rng.random() < config.p_oversize:
        stats.faults["oversize"] += 1
        headers["Content-Length"] = str(1 << 30)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.close()
        return response
    if config.p_truncate and rng.random() < config.p_truncate:
        stats.faults["truncate"] += 1
        headers["Content-Length"] = str(len(body))
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.close()  # flushes what was written, then closes: a short body
        return response
    stats.images_served += 1
    stats.bytes_served += len(body)
    return web.Response(status=status, body=body, headers=headers)
