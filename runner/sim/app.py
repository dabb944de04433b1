"""The simulator's HTTP side: :class:`SimServer`, its handlers, limits and faults.

Routes (``<base>`` is ``/api/v1``):

* ``POST <base>/generateTask/{model}`` and ``GET <base>/statusTask/{model}?taskId=`` - the
  API, answering the documented envelope ``{"code", "message", "data"}``.
* ``GET /files/{task_id}/{index}.png?exp=&sig=`` - result images (with ``Range``); 410
  once ``exp`` (Unix ms, ``url_ttl_s`` after the answer that handed the URL out) has
  passed or the task is gone (``retention_s`` after completion), 404 if forged.
* ``GET /_sim/stats``, ``GET|POST /_sim/config``, ``GET /_sim/tasks/{task_id}`` - control
  and observability; neither rate limited nor counted.

Each API request goes through the same gate first (:mod:`runner.sim.gate`), so that
injected faults are decided before any side effect. Submissions then check the model (404),
the body (400), the live-task limit (429; ``foreign_live`` slots held by another client
count against it), the balance (403), create the task (written to the state folder, if
any, before anything is answered) and maybe lose the answer anyway (``p_reset_after``:
a reset; ``p_5xx_after_create``: a 5xx). Status requests find the task (404, also once it
is gone), give the first ``bad_status_first`` of each task an unreadable 200, then the
state. ``p_hostile`` malforms a 200 answer: a submission's taskId, or the status of a
finished task (see ``HOSTILE_MODES``). The duration ``profile`` takes effect at the start
and again each time ``profile`` is set (``drift`` counts from then). Per-request work is
O(1) amortised: the window is a deque of timestamps, live tasks and billing heaps of
completion times.

With a ``state_dir`` (:mod:`~runner.sim.store`) the server loads the tasks, balance and
URL-signing secret of the folder's previous servers at start, so tasks submitted to a
process that died are found (status and files; their webhooks are not sent again), and
``tasks_created``, ``submissions_per_prompt``, ``credits_spent``, ``images_billed`` and
the balance count over the folder's whole life.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from runner.sim.books import Books
from runner.sim.callbacks import CallbackSender
from runner.sim.config import HOSTILE_MODES, SimConfig
from runner.sim.files import find_file, serve_file
from runner.sim.gate import FIVE_XX, MESSAGES, Gate, envelope
from runner.sim.hostile import malformed_status, unreadable_status
from runner.sim.tasks import (
    FAILED,
    SUCCESS,
    InvalidRequest,
    Task,
    new_task,
    parse_submission,
)
from runner.sim.urls import UrlSigner

API_PREFIX = "/api/v1"


class SimServer:
    """The simulator as an aiohttp server inside the running event loop.

    ``async with SimServer(cfg, port=0) as sim`` (or ``await start()`` / ``await stop()``)
    binds, then exposes ``base_url``, ``port``, ``config`` (mutable, read per request),
    ``stats`` and ``tasks`` (task id -> :class:`~runner.sim.tasks.Task`).

    ``state_dir``: a folder (created if missing) that keeps the tasks across server
    processes; see the module docstring. ``start()`` raises
    :class:`~runner.sim.store.StateFolderBusy` if another simulator has it open.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        state_dir: Path | str | None = None,
    ) -> None:
        self.config = config if config is not None else SimConfig()
        self.host = host
        self.port = port
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._books = Books(lambda: self.config)
        self.stats = self._books.stats
        self.tasks = self._books.tasks
        self._limits = self._books.limits
        self._rng = random.Random(self.config.seed)
        self._signer = UrlSigner()
        self._gate = Gate(lambda: self.config, self.stats, self._limits, self._rng)
        self._callbacks = CallbackSender(
            lambda: self.config, self.stats, self._rng, self._callback_body
        )
        self._runner: web.AppRunner | None = None
        # The duration profile last seen and when it took effect (drift counts from then).
        self._profile: str | None = None
        self._profile_since_ms = 0.0

    @property
    def origin(self) -> str:
        """``http://host:port`` of the bound server, as a client on this machine reaches it."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL a client uses, e.g. ``http://127.0.0.1:8000/api/v1``."""
        return self.origin + API_PREFIX

    async def start(self) -> SimServer:
        if self.state_dir is not None:
            secret = self._books.open(self.state_dir, self._signer.secret)
            self._signer = UrlSigner(secret)
            for task in self.tasks.values():
                task.url_signer = self.result_urls
        self._foreign_live(time.time() * 1000)  # the foreign_live hold begins now
        self._profile_since(time.time() * 1000)  # and the duration profile's life
        app = web.Application(middlewares=[self._envelope_errors])
        app.router.add_post(API_PREFIX + "/generateTask/{model}", self._generate)
        app.router.add_get(API_PREFIX + "/statusTask/{model}", self._status)
        app.router.add_get("/files/{task_id}/{name}", self._file)
        app.router.add_get("/_sim/stats", self._get_stats)
        app.router.add_get("/_sim/config", self._get_config)
        app.router.add_post("/_sim/config", self._post_config)
        app.router.add_get("/_sim/tasks/{task_id}", self._get_task)
        # A short shutdown timeout: a handler sleeping for p_slow must not hold up stop().
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await self.stop()
            raise
        self.port = int(self._runner.addresses[0][1])
        await self._callbacks.start()
        return self

    async def stop(self) -> None:
        await self._callbacks.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._books.close()

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @web.middleware
    async def _envelope_errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Unknown API routes and wrong methods answer in the envelope too."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if not request.path.startswith(API_PREFIX) or exc.status < 400:
                raise
            return web.Response(
                body=envelope(exc.status, {"error": "path"}, exc.reason),
                status=exc.status,
                content_type="application/json",
                headers={k: v for k, v in exc.headers.items() if k == "Allow"},
            )

    # -- the two endpoints -------------------------------------------------------------

    async def _generate(self, request: web.Request) -> web.Response:
        key, early = await self._gate.check(request, "generate")
        if early is not None:
            return early
        model = request.match_info["model"]
        try:
            body = orjson.loads(await request.read())
            sub = parse_submission(model, body)
        except orjson.JSONDecodeError:
            msg = "invalid parameters: the body must be a JSON object"
            return self._gate.answer("generate", 400, {"error": "body"}, msg)
        except InvalidRequest as exc:
            return self._gate.answer(
                "generate", 400, {"error": exc.field}, f"invalid parameters: {exc}"
            )
        cfg = self.config
        now_ms = time.time() * 1000
        live, foreign = self._limits.live(key, now_ms), self._foreign_live(now_ms)
        if live + foreign >= cfg.concurrency:
            msg = f"concurrency limit: {live} tasks pending or processing"
            if foreign:
                msg += f" and {foreign} held by another client of this key"
                if live < cfg.concurrency:
                    self.stats.faults["foreign_live"] += 1
            msg += f", at most {cfg.concurrency}"
            return self._gate.too_many("generate", "concurrency_limit", msg)
        if cfg.credits is not None and sub.max_images > cfg.credits:
            msg = (
                f"insufficient balance: {cfg.credits} credits left, max_images is {sub.max_images}"
            )
            return self._gate.answer("generate", 403, {"error": "balance"}, msg)
        task_id = f"task_{self._rng.getrandbits(96):024x}"
        while task_id in self.tasks:  # a seeded server replays the ids of the folder's past
            task_id = f"task_{self._rng.getrandbits(96):024x}"
        task = new_task(
            sub,
            task_id=task_id,
            key=key,
            origin=self._request_origin(request),
            now_ms=int(now_ms),
            config=cfg,
            rng=self._rng,
            profile_since_ms=self._profile_since(now_ms),
        )
        self._record(task)
        if cfg.p_reset_after and self._rng.random() < cfg.p_reset_after:
            self.stats.faults["reset_after"] += 1
            return self._gate.reset(request, "generate")
        if cfg.p_5xx_after_create and self._rng.random() < cfg.p_5xx_after_create:
            self.stats.faults["5xx_after_create"] += 1
            status = self._rng.choice(FIVE_XX)
            msg = f"{MESSAGES[status]} (injected after the task was created)"
            return self._gate.answer("generate", status, {}, msg)
        if cfg.hostile in (None, "task_id") and self._hostile():
            self.stats.faults["hostile"] += 1
            return self._gate.answer("generate", 200, {"taskId": "../../../../etc/passwd"})
        return self._gate.answer("generate", 200, {"taskId": task.task_id})

    def _hostile(self) -> bool:
        p = self.config.p_hostile
        return bool(p) and self._rng.random() < p

    def _record(self, task: Task) -> None:
        """Create a new task: books (and state folder) first, then its webhook."""
        task.url_signer = self.result_urls
        self._books.create(task)
        if task.submission.request_type == "callback" and not task.stuck:
            self._callbacks.schedule(task)

    def _foreign_live(self, now_ms: float) -> int:
        """Live slots of every key held by another client right now (``foreign_live``)."""
        cfg = self.config
        return self._limits.foreign(now_ms, cfg.foreign_live, cfg.scaled(cfg.foreign_hold_s) * 1000)

    def _profile_since(self, now_ms: float) -> float:
        """When the current duration profile took effect: the start, the last time
        ``profile`` was set through /_sim/config, or (set as an attribute) the first
        submission that saw it."""
        if self.config.profile != self._profile:
            self._profile, self._profile_since_ms = self.config.profile, now_ms
        return self._profile_since_ms

    def _request_origin(self, request: web.Request) -> str:
        # Result URLs point where the client reached us, so they work across machines too.
        host = request.headers.get("Host")
        return f"{request.scheme}://{host}" if host else self.origin

    async def _status(self, request: web.Request) -> web.Response:
        key, early = await self._gate.check(request, "status")
        if early is not None:
            return early
        model = request.match_info["model"]
        task_id = request.query.get("taskId", "")
        if not task_id:
            msg = "invalid parameters: the query parameter taskId is required"
            return self._gate.answer("status", 400, {"error": "taskId"}, msg)
        task = self.tasks.get(task_id)
        if task is None or task.key != key or task.submission.model != model:
            msg = f"task {task_id!r} not found for model {model!r}"
            return self._gate.answer("status", 404, {"error": "taskId"}, msg)
        now_ms = time.time() * 1000
        if task.gone_at(now_ms, self._retention_ms()):
            msg = (
                f"task {task_id!r} not found: results are kept "
                f"{self.config.retention_s:g} s after completion"
            )
            return self._gate.answer("status", 404, {"error": "taskId"}, msg)
        task.status_requests += 1
        if task.status_requests <= self.config.bad_status_first:
            self.stats.faults["bad_status"] += 1
            self.stats.requests["status", 200] += 1
            return unreadable_status(task.status_requests)
        state = task.state_at(now_ms)
        origin = self._request_origin(request)
        data = self._status_data(task, state, origin)
        if state in (SUCCESS, FAILED) and self.config.hostile != "task_id" and self._hostile():
            self.stats.faults["hostile"] += 1
            self.stats.requests["status", 200] += 1
            mode = self.config.hostile or self._rng.choice(HOSTILE_MODES[1:])
            return malformed_status(mode, data, origin)
        return self._gate.answer("status", 200, data)

    def _retention_ms(self) -> float:
        return self.config.scaled(self.config.retention_s) * 1000

    def _status_data(self, task: Task, state: str, origin: str) -> dict[str, Any]:
        urls = self.result_urls(task, origin) if state == SUCCESS else []
        return task.status_data(state, urls)

    def _callback_body(self, task: Task) -> bytes:
        # The timer may fire a hair before complete_ms on the wall clock: report the
        # terminal state the task is in from that instant on.
        state = FAILED if task.fail_code else SUCCESS
        return envelope(200, self._status_data(task, state, task.origin or self.origin))

    # -- result files ------------------------------------------------------------------

    def result_urls(self, task: Task, origin: str | None = None) -> list[str]:
        """Signed URLs of the task's images, valid ``url_ttl_s`` (scaled) from now.

        They point at ``origin`` (default: where the task was submitted, or this server
        for a task loaded from the state folder).
        """
        cfg = self.config
        exp_ms = int(time.time() * 1000 + cfg.scaled(cfg.url_ttl_s) * 1000)
        where = origin or task.origin or self.origin
        return self._signer.issue(where, task.task_id, task.n_images, exp_ms)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        found = find_file(request, self.tasks, self._signer, self._retention_ms())
        if isinstance(found, tuple):
            task, index = found
            return await serve_file(request, task, index, self.config, self._rng, self.stats)
        self.stats.requests["file", found] += 1
        if found == 410:
            text = "gone: the URL expired (ask for the task's status again) or the task is gone\n"
            return web.Response(status=410, text=text)
        return web.Response(status=404, text="not found\n")

    # -- control -----------------------------------------------------------------------

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_dict())

    async def _get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config.to_dict())

    async def _post_config(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            changes = None
        if not isinstance(changes, dict):
            message = "body: expected a JSON object of SimConfig fields"
            return web.json_response({"error": "body", "message": message}, status=400)
        try:
            self.config.update(changes)
        except ValueError as exc:
            field = str(exc).partition(":")[0]
            return web.json_response({"error": field, "message": str(exc)}, status=400)
        if "seed" in changes:
            self._rng.seed(self.config.seed)
        self._foreign_live(time.time() * 1000)  # a change of foreign_* starts its hold now
        if "profile" in changes:  # even to the same value: drift counts from now
            self._profile = None
            self._profile_since(time.time() * 1000)
        if "credits" in changes:
            self._books.note_credits()
        return web.json_response(self.config.to_dict())

    async def _get_task(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return web.json_response({"error": "taskId"}, status=404)
        state = task.state_at(time.time() * 1000)
        return web.json_response(
            {
                "status": self._status_data(task, state, self._request_origin(request)),
                "model": task.submission.model,
                "input": task.submission.input,
                "n_images": task.n_images,
                "stuck": task.stuck,
                "sha256": task.sha256 if state == SUCCESS else [],
            }
        )
