"""Shared helpers of the simulator tests (tests/test_sim_*.py).

Every test talks real HTTP over 127.0.0.1 to a SimServer bound to port 0, at a tiny time
scale so a 2K generation takes 25-35 ms. Their fixtures live in conftest.py: ``fast_sim``
(a SimServer on :func:`fast_config`) and ``http`` (a client session sending :data:`AUTH`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from aiohttp import web

from runner.sim import SimConfig, SimServer

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "seedream-4-5"
FAST = 0.001  # time scale: simulated seconds -> milliseconds


def fast_config(**overrides: Any) -> SimConfig:
    """A seeded config at time scale 0.001 with ``overrides`` applied."""
    fields: dict[str, Any] = {"time_scale": FAST, "seed": 1234}
    fields.update(overrides)
    return SimConfig(**fields)


def body(**input_fields: Any) -> dict[str, Any]:
    """A valid seedream-4-5 submission, its ``input`` updated with ``input_fields``."""
    inp: dict[str, Any] = {"prompt": "a red fox in the snow", "max_images": 1}
    inp.update(input_fields)
    return {"input": inp}


async def post(
    http: aiohttp.ClientSession, sim: SimServer, payload: Any, model: str = MODEL
) -> tuple[int, dict[str, Any]]:
    """Submit ``payload`` (JSON); return the HTTP status and the decoded envelope."""
    async with http.post(f"{sim.base_url}/generateTask/{model}", json=payload) as resp:
        return resp.status, await resp.json()


async def submit(
    http: aiohttp.ClientSession, sim: SimServer, payload: Any, model: str = MODEL
) -> str:
    """Submit and return the task id, failing the test unless the answer is 200."""
    status, envelope = await post(http, sim, payload, model)
    assert status == 200, envelope
    task_id = envelope["data"]["taskId"]
    assert isinstance(task_id, str)
    return task_id


async def get_status(
    http: aiohttp.ClientSession, sim: SimServer, task_id: str, model: str = MODEL
) -> tuple[int, dict[str, Any]]:
    url = f"{sim.base_url}/statusTask/{model}"
    async with http.get(url, params={"taskId": task_id}) as resp:
        return resp.status, await resp.json()


async def wait_terminal(
    http: aiohttp.ClientSession,
    sim: SimServer,
    task_id: str,
    model: str = MODEL,
    limit_s: float = 10.0,
) -> dict[str, Any]:
    """Poll until the task is success or failed; return its status ``data``."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status, envelope = await get_status(http, sim, task_id, model)
        assert status == 200, envelope
        data: dict[str, Any] = envelope["data"]
        if data["state"] in ("success", "failed"):
            return data
        await asyncio.sleep(0.005)
    raise AssertionError(f"task {task_id} did not finish within {limit_s} s")


def url_paths(urls: list[str]) -> list[str]:
    """The URLs without their query (``exp``, ``sig``): what a fresh hand-out keeps."""
    return [u.partition("?")[0] for u in urls]


def unsigned(envelope: dict[str, Any]) -> dict[str, Any]:
    """A status envelope with its result URLs cut to :func:`url_paths`, for comparing two
    answers handed out at different moments (each issues URLs valid from then)."""
    data = dict(envelope["data"])
    if isinstance(data.get("resultJson"), str):
        urls = json.loads(data["resultJson"])["resultUrls"]
        data["resultJson"] = json.dumps({"resultUrls": url_paths(urls)})
    return {**envelope, "data": data}


def url_exp_ms(url: str) -> int:
    """The ``exp`` of a signed result URL: Unix milliseconds."""
    query = url.partition("?")[2]
    return int(dict(p.split("=", 1) for p in query.split("&"))["exp"])


async def until(predicate: Any, limit_s: float = 5.0) -> None:
    """Wait until ``predicate()`` is true (a condition on counters, not on time)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


class Receiver:
    """A webhook receiver on 127.0.0.1:0 that records every delivery.

    ``script`` gives the answer to each successive delivery: an HTTP status, or a negative
    number -S meaning "sleep S seconds, then answer 200" (to trip the sender's timeout).
    Once the script is used up every delivery is answered 200.
    """

    def __init__(self, script: list[float] | None = None) -> None:
        self.script = list(script or [])
        self.received: list[tuple[float, dict[str, Any]]] = []  # (monotonic time, JSON)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append((time.monotonic(), await request.json()))
        answer = self.script.pop(0) if self.script else 200
        if answer < 0:
            await asyncio.sleep(-answer)
            answer = 200
        return web.Response(status=int(answer), text="ok")

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook?secret=s3cr3t"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [b for _, b in self.received]
