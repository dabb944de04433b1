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

Two checks make a broken path from the API to the receiver visible instead of silent:

* :meth:`CallbackReceiver.prove_public_url`, once at start-up before anything is
  submitted: a POST through the public URL carrying a one-time nonce, which only this
  receiver recognises (it is not a webhook). If it does not arrive, the run stops with
  exit 2 and says which URL was tried, what came back and what to check.
* :meth:`CallbackReceiver.check_silence` (or the loop :meth:`CallbackReceiver.watch_silence`),
  during the run: one warning line when no webhook has arrived for a while although tasks
  are overdue (their webhooks are late; polling catches them meanwhile).

Neither ever logs the secret: URLs are shown with ``<secret>`` in its place.

Owns: the receiver, its secret and its checks. Must not know: the ledger and the jobs
(``accept`` and ``known`` are handed in), polling.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from runner.clock import SYSTEM_CLOCK, Clock
from runner.errors import ApiError, ManifestError

from .answers import TaskStatus, parse_status
from .outcome import Request

__all__ = ["MAX_BODY", "PROBE_TIMEOUT_S", "SILENCE_S", "CallbackReceiver", "load_secret"]

log = logging.getLogger("runner.callback")

#: a status envelope is a few hundred bytes; 64 KiB leaves room for many result URLs
MAX_BODY = 64 * 1024
SECRET_NAME = ".callback-secret"
#: the start-up probe's limit for an answer (the API itself waits 30 s for a 200)
PROBE_TIMEOUT_S = 15.0
#: the body key of a start-up probe; a webhook envelope never has it
PROBE_KEY = "runner_probe"
#: no webhook for this long while tasks are overdue: warn (once per silent spell)
SILENCE_S = 60.0


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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.host, self.port = _split_listen(listen)
        self._public_url = public_url
        self._secret = secret
        self._known = known
        self._accept = accept
        self._runner: web.AppRunner | None = None
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0
        #: webhooks that came through the secret path with a task id (whatever became of
        #: them): proof that the path from the API works
        self.deliveries = 0
        self._last_delivery = self.clock.monotonic()
        self._silence_warned = False
        self._probes: dict[str, bool] = {}  # nonce -> arrived

    @property
    def callback_url(self) -> str:
        """The URL given to the API: the public base plus the secret."""
        base = self._public_url or f"http://{self.host}:{self.port}"
        return f"{base.rstrip('/')}/{self._secret}"

    @property
    def shown_url(self) -> str:
        """:attr:`callback_url` fit for a log line or a message: the secret replaced."""
        return self._redact(self.callback_url)

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "<secret>")

    async def __aenter__(self) -> CallbackReceiver:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._last_delivery = self.clock.monotonic()
        # Never log the secret: it is the only thing that keeps forged posts out.
        shown = urlsplit(self.callback_url)
        log.info("callback receiver on %s:%d (public %s://%s/...)", self.host, self.port,
                 shown.scheme, shown.netloc)  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the start-up probe --------------------------------------------------------------

    async def prove_public_url(self, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        """POST a one-time probe to :attr:`callback_url` and check that this receiver got
        it and that the answer was the 200 the API needs.

        Raises :class:`~runner.errors.ManifestError` (exit 2; nothing has been submitted)
        naming the URL tried (secret hidden), what came back and what to check. Call it
        once, after the receiver has started and before the first submission.
        """
        nonce = secrets.token_urlsafe(16)
        self._probes[nonce] = False
        status: int | None = None
        answer = ""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
                http.post(
                    self.callback_url,
                    data=orjson.dumps({PROBE_KEY: nonce}),
                    headers={"Content-Type": "application/json"},
                    # Webhooks go to this exact URL: a redirect is an answer to report.
                    allow_redirects=False,
                ) as resp,
            ):
                status = resp.status
                answer = self._describe_answer(resp, await resp.content.read(1024))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # ClientError texts can carry the URL: the secret is taken out below.
            detail = str(exc) or f"nothing within {timeout_s:g} s"
            answer = f"no answer ({type(exc).__name__}: {detail})"
        finally:
            arrived = self._probes.pop(nonce, False)
        if arrived and status == 200:
            log.info("callback URL checked: a probe via %s reached the receiver", self.shown_url)
            return
        message = self._probe_failure(arrived, answer)
        raise ManifestError(self._redact(message), "api.callback.public_url")

    @staticmethod
    def _describe_answer(resp: aiohttp.ClientResponse, head: bytes) -> str:
        text = head.decode("utf-8", "replace")
        # An error page: its title says it all (nginx: "404 Not Found").
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        text = title[1] if title else re.sub(r"<[^>]*>", " ", text)
        text = " ".join(text.split())[:160]
        server = resp.headers.get("Server")
        parts = [f"HTTP {resp.status}"]
        if server:
            parts.append(f"from {server}")
        if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
            parts.append(f"redirecting to {resp.headers['Location']}")
        if text:
            parts.append(repr(text))
        return " ".join(parts)

    def _probe_failure(self, arrived: bool, answer: str) -> str:
        listen = f"{self.host}:{self.port}"
        prefix = urlsplit(self._public_url).path.rstrip("/") if self._public_url else ""
        if arrived:
            problem = (
                f"the start-up probe posted to {self.callback_url} reached the receiver on "
                f"{listen}, but the answer came back as {answer}; the API accepts only a 200, "
                "so check that the proxy passes the receiver's answer through unchanged"
            )
        else:
            got = answer if answer.startswith("no answer") else f"got {answer}"
            problem = (
                f"the start-up probe posted to {self.callback_url} {got}, and the receiver on "
                f"{listen} never saw it, so the API's webhooks would not arrive either. "
                "Check that public_url is the public address of the proxy or tunnel in front "
                f"of {listen}, including the path prefix it forwards"
                + (f" (here {prefix}/)" if prefix else "")
                + f", that the proxy forwards that prefix to {listen}, and that the "
                "proxy or tunnel is running"
            )
        return problem + "; nothing was submitted"

    # -- silence while tasks are overdue ---------------------------------------------------

    def check_silence(
        self, overdue: int, silence_s: float = SILENCE_S, now: float | None = None
    ) -> bool:
        """Warn, in one line, when no webhook has arrived for ``silence_s`` seconds while
        ``overdue`` tasks are past the time their webhook was expected. Once per silent
        spell: the next webhook re-arms it. True when it warned now."""
        now = self.clock.monotonic() if now is None else now
        quiet = now - self._last_delivery
        if self._silence_warned or overdue <= 0 or quiet < silence_s:
            return False
        self._silence_warned = True
        log.warning(
            "no webhook has arrived for %.0f s while %d task%s overdue; polling %s instead; "
            "check api.callback.public_url (%s) and the proxy or tunnel in front of %s:%d",
            quiet,
            overdue,
            " is" if overdue == 1 else "s are",
            "it" if overdue == 1 else "them",
            self.shown_url,
            self.host,
            self.port,
        )
        return True

    async def watch_silence(
        self,
        overdue: Callable[[], int],
        silence_s: float = SILENCE_S,
        every_s: float = 5.0,
    ) -> None:
        """Until cancelled: every ``every_s`` seconds, :meth:`check_silence` with the count
        ``overdue()`` gives (the poller's tasks whose webhook is late)."""
        while True:
            await self.clock.sleep(every_s)
            self.check_silence(overdue(), silence_s)

    def _delivered(self) -> None:
        self.deliveries += 1
        self._last_delivery = self.clock.monotonic()
        if self._silence_warned:
            self._silence_warned = False
            log.info("webhooks arrive again")

    # -- requests ------------------------------------------------------------------------

    def _reject(self, status: int, text: str) -> web.Response:
        self.rejected += 1
        return web.Response(status=status, text=text)

    def _probe(self, nonce: object) -> web.Response:
        """A start-up probe: 200 only for a nonce this receiver issued."""
        if isinstance(nonce, str) and nonce in self._probes:
            self._probes[nonce] = True
            return web.Response(text="probe ok")
        return self._reject(404, "unknown probe")

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
        if isinstance(envelope, dict) and PROBE_KEY in envelope:
            return self._probe(envelope[PROBE_KEY])
        data = envelope.get("data") if isinstance(envelope, dict) else None
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(task_id, str):
            return self._reject(400, "no data.taskId")
        self._delivered()
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
