"""The run's connection to the API: the request gate, the client and, for
``api.base_url: embedded``, the built-in simulator standing in for the API.

Owns: sizing the gate and the client from the campaign's limits, and starting the
embedded simulator with its state kept in the output folder. Must not know: jobs, the
ledger, webhooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from runner.api.client import ApiClient
from runner.api.limits import RequestGate
from runner.clock import Clock
from runner.manifest.campaign import Campaign

__all__ = ["SIM_STATE_DIR", "connect"]

#: where the embedded simulator keeps its tasks, inside the output folder
SIM_STATE_DIR = ".simulator"


@contextlib.asynccontextmanager
async def connect(campaign: Campaign, api_key: str, clock: Clock) -> AsyncIterator[ApiClient]:
    """An open client for the campaign's API, every request through one gate."""
    api, limits = campaign.api, campaign.limits
    # A burst as large as the slots lets a fresh run fill them all at once.
    gate = RequestGate(limits.rate, limits.rate_period_s, burst=limits.concurrency, clock=clock)
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
