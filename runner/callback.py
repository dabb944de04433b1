"""Callback mode: the webhook receiver and the secret in its URL.

The provider POSTs a task's final status to the ``callback_url`` given at submission.
Deliveries are unsigned and may come late, twice or never, so:

* the URL ends in a secret (256 random bits, kept in the output folder so that deliveries
  arriving after a restart still reach the next run); a POST anywhere else gets 404;
* only a valid envelope for a task this run is waiting on is accepted; anything else
  (unknown task, malformed JSON, a body over :data:`MAX_BODY` bytes, another method) is
  rejected with no side effect;
* an accepted delivery is handed to ``accept`` (which records it in the ledger) *before*
  the 200 goes back, so an acknowledged delivery is never lost;
* a duplicate is acknowledged and ignored.

The receiver answers at once and does no other work: the provider wants a 200 within 30 s.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from .client import TaskStatus, parse_status
from .errors import ApiError, ManifestError
from .outcome import Request

__all__ = ["MAX_BODY", "CallbackReceiver", "load_secret"]

log = logging.getLogger("runner.callback")

#: a status envelope is a few hundred bytes; 64 KiB leaves room for many result URLs
MAX_BODY = 64 * 1024
SECRET_NAME = ".callback-secret"


def load_secret(folder: Path) -> str:
    """The output folder's callback secret, created on first use (readable by the owner
    only). The same folder always gives the same secret."""
    path = folder / SECRET_NAME
    try:
        secret = path.read_text().strip()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    tmp = folder / f"{SECRET_NAME}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return secret


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        raise ManifestError(f"{listen!r} is not host:port", "api.callback.listen") from None


class CallbackReceiver:
    """An aiohttp server that accepts the provider's deliveries on the secret path.

    ``accept(status)`` is called for a valid terminal status of a known task; it returns
    True if the delivery was new (recorded), False for a duplicate. ``known(task_id)``
    tells whether this run is waiting on a task."""

    def __init__(
        self,
        listen: str,
        public_url: str | None,
        secret: str,
        *,
        known: Callable[[str], bool],
        accept: Callable[[TaskStatus], bool],
    ) -> None:
        self.host, self.port = _split_listen(listen)
        self._public_url = public_url
        self._secret = secret
        self._known = known
        self._accept = accept
        self._runner: web.AppRunner | None = None
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0

    @property
    def callback_url(self) -> str:
        """The URL given to the API: the public base plus the secret."""
        base = self._public_url or f"http://{self.host}:{self.port}"
        return f"{base.rstrip('/')}/{self._secret}"

    async def __aenter__(self) -> CallbackReceiver:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        # Never log the secret: it is the only thing that keeps forged posts out.
        shown = urlsplit(self.callback_url)
        log.info("callback receiver on %s:%d (public %s://%s/...)", self.host, self.port,
                 shown.scheme, shown.netloc)  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _reject(self, status: int, text: str) -> web.Response:
        self.rejected += 1
        return web.Response(status=status, text=text)

    async def _handle(self, request: web.Request) -> web.Response:
        # The secret is the last path segment, whatever prefix a reverse proxy keeps.
        segment = request.path.rstrip("/").rsplit("/", 1)[-1]
        if not hmac.compare_digest(segment.encode(), self._secret.encode()):
            return self._reject(404, "not found")
        if request.method != "POST":
            return self._reject(405, "POST only")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return self._reject(413, "too large")
        try:
            raw = await request.content.read(MAX_BODY + 1)
        except (OSError, ValueError):
            return self._reject(400, "unreadable body")
        if len(raw) > MAX_BODY:
            return self._reject(413, "too large")
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._reject(400, "not JSON")
        data = envelope.get("data") if isinstance(envelope, dict) else None
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(task_id, str):
            return self._reject(400, "no data.taskId")
        if not self._known(task_id):
            return self._reject(404, "unknown task")
        try:
            status = parse_status(data, task_id, Request.WEBHOOK)
        except ApiError:
            # The outcome policy refuses an unreadable delivery (PERMANENT for a webhook):
            # nothing changes, and polling finds the task.
            return self._reject(400, "unusable status")
        if not status.state.terminal:
            return web.Response(text="ok")  # progress notes are not results: ignore
        if self._accept(status):
            self.accepted += 1
        else:
            self.duplicates += 1
        return web.Response(text="ok")
