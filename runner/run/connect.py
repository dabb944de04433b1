"""The run's connection to the API: the request gate, the client and, for
``api.base_url: embedded``, the built-in simulator standing in for the API.

Owns: sizing the gate and the client from the campaign's limits, starting the embedded
simulator with its state kept in the output folder, and keeping one kind of API per
folder (:func:`check_api_kind`). Must not know: jobs, webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from runner.api.client import ApiClient
from runner.api.limits import SAVE_EVERY_S, SEND_STEP_S, RequestGate, SendLog
from runner.clock import Clock
from runner.errors import ManifestError
from runner.manifest.campaign import Campaign
from runner.state.index import LedgerIndex

__all__ = [
    "API_KIND_FILE",
    "SENDS_FILE",
    "SIM_STATE_DIR",
    "check_api_kind",
    "connect",
    "read_sends",
    "request_gate",
    "saving_sends",
]

#: where the embedded simulator keeps its tasks, inside the output folder
SIM_STATE_DIR = ".simulator"
#: which kind of API the folder's work was done on: "embedded" or "api"
API_KIND_FILE = ".api-kind"
#: the requests a run sent in the API's last window, saved every second and as it ends,
#: so that the next run in the folder knows what the API still counts
SENDS_FILE = ".runner.sends"
_SENDS_MAX_BYTES = 1 << 20

log = logging.getLogger("runner")


def check_api_kind(campaign: Campaign, index: LedgerIndex) -> None:
    """One output folder, one kind of API: images of the built-in simulator must never
    count as paid work of the real API (or the reverse). The first run records which it
    used; a later run with the other kind is exit 2. ``index``: the folder's ledger."""
    out = campaign.output.dir
    marker = out / API_KIND_FILE
    kind = "embedded" if campaign.api.embedded else "api"
    try:
        recorded = marker.read_text().strip()
    except FileNotFoundError:
        if index:  # a folder from before the marker: take it as it is
            return
        marker.write_text(kind + "\n")
        return
    if recorded in ("embedded", "api") and recorded != kind:
        what = {"embedded": "the built-in simulator", "api": "a real API"}
        raise ManifestError(
            f"this output folder holds work done on {what[recorded]}, and this run "
            f"would use {what[kind]}: its images would count as the other's. Use "
            "another output.dir for this run (or delete the folder to start over)",
            str(out),
        )


def request_gate(
    campaign: Campaign, clock: Clock, *, last_run_wall: float | None, sends_path: Path
) -> RequestGate:
    """The run's one gate, sized from the campaign's limits, counting what an earlier
    run in this folder still has in the API's window (:meth:`RequestGate.follow`, from
    the record at ``sends_path``; ``last_run_wall``: when that run last wrote its
    ledger). Keep its record from here on with :func:`saving_sends`."""
    limits = campaign.limits
    # A burst as large as the slots lets a fresh run fill them all at once.
    gate = RequestGate(limits.rate, limits.rate_period_s, burst=limits.concurrency, clock=clock)
    if gate.follow(last_run_wall, read_sends(sends_path)):
        log.info(
            "no record of the requests the last run in this folder sent (it ended %.0f s "
            "ago): the API's window is taken as full, so the first requests may wait up "
            "to %.0f s",
            max(0.0, clock.wall() - (last_run_wall or 0.0)),
            limits.rate_period_s,
        )
    return gate


@contextlib.asynccontextmanager
async def connect(campaign: Campaign, api_key: str, gate: RequestGate) -> AsyncIterator[ApiClient]:
    """An open client for the campaign's API, every request through ``gate``
    (:func:`request_gate`)."""
    api, limits = campaign.api, campaign.limits
    async with contextlib.AsyncExitStack() as stack:
        base_url, key = api.base_url, api_key
        if api.embedded:
            base_url = await stack.enter_async_context(_embedded(campaign, campaign.output.dir))
            key = "embedded"
        client = ApiClient(
            base_url,
            key,
            api.model,
            gate,
            attempts=campaign.retry.attempts,
            request_timeout_s=campaign.retry.request_timeout_s,
            connections=limits.concurrency + limits.downloads + 16,
        )
        yield await stack.enter_async_context(client)


def read_sends(path: Path) -> SendLog | None:
    """The sends an earlier run saved at ``path``; None if there are none, or the file is
    not what :func:`saving_sends` writes (then the gate assumes the most an earlier run
    could have sent). Only a small regular file is read (never a pipe or a device)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _SENDS_MAX_BYTES:
            return None
        raw = orjson.loads(os.read(fd, _SENDS_MAX_BYTES))
        counts = tuple(raw["counts"])
        log = SendLog(float(raw["at"]), float(raw["step_s"]), counts, raw["final"] is True)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    finally:
        os.close(fd)
    fine = math.isfinite(log.at) and 0.0 < log.step_s <= 60.0 and len(counts) <= 100_000
    if not fine or not all(type(n) is int and 0 <= n <= 1_000_000 for n in counts):
        return None
    return log


@contextlib.asynccontextmanager
async def saving_sends(gate: RequestGate, path: Path, clock: Clock) -> AsyncIterator[None]:
    """Save the gate's sends to ``path`` now (before the ledger is touched and before
    any request: a run killed at any moment leaves a record to trust), every
    :data:`SAVE_EVERY_S` (on the event loop's timer), whenever the gate has let
    :attr:`RequestGate.unsaved_max` requests through since, and, marked final, on the
    way out. A failure to write costs the next run only the exact count (it then
    assumes the most an earlier run could have sent): it is warned of once, and the run
    goes on."""
    tmp = path.with_name(path.name + ".tmp")
    warned = False

    def save(final: bool = False) -> None:
        nonlocal warned
        data = {"at": clock.wall(), "step_s": SEND_STEP_S, "final": final, "counts": gate.sends()}
        try:
            tmp.write_bytes(orjson.dumps(data))
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not warned:
                warned = True
                log.warning(
                    "cannot save the requests sent (%s): %s", path.name, exc.strerror or exc
                )

    async def keep() -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            save()

    save()
    gate.on_unsaved = save
    saver = asyncio.create_task(keep())
    try:
        yield
    finally:
        gate.on_unsaved = None
        saver.cancel()
        save(final=True)
        await asyncio.wait([saver])


@contextlib.asynccontextmanager
async def _embedded(campaign: Campaign, out: Path) -> AsyncIterator[str]:
    """The simulator, started for this run; yields its base URL."""
    # Lazy import, for start-up time: only an embedded run loads the simulator.
    from runner.sim import SimConfig, SimServer

    api, limits = campaign.api, campaign.limits
    # Its tasks, timings and files outlive this process (kept in the output folder), so a
    # kill, a deleted image or a deadline resume as on the API.
    sim = SimServer(
        SimConfig(
            time_scale=api.sim_time_scale, rate=limits.rate, rate_period_s=limits.rate_period_s
        ),
        host="127.0.0.1",
        port=0,
        state_dir=out / SIM_STATE_DIR,
    )
    async with sim:
        yield sim.base_url
