"""Webhooks: the status envelope POSTed on completion, retried with growing delays on a
non-200 or a timeout, duplicated or dropped on request, cancelled on stop."""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
from simfixtures import (
    Receiver,
    body,
    fast_config,
    get_status,
    submit,
    unsigned,
    until,
    wait_terminal,
)

from runner.sim import SimConfig, SimServer

# Webhook attempts may take 5 s (real) before they count as timed out, unless a test says.
PATIENT = 5000.0


def callback_body(url: str, **input_fields: Any) -> dict[str, Any]:
    payload = body(**input_fields)
    payload.update(request_type="callback", callback_url=url)
    return payload


def config(**overrides: Any) -> SimConfig:
    return fast_config(**{"callback_timeout_s": PATIENT, **overrides})


async def test_callback_posts_the_status_envelope_on_success(http: aiohttp.ClientSession) -> None:
    async with Receiver() as hook, SimServer(config()) as sim:
        task_id = await submit(http, sim, callback_body(hook.url, max_images=2))
        await until(lambda: len(hook.received) == 1)
        _, polled = await get_status(http, sim, task_id)  # polling works for callback tasks
    delivered = hook.bodies[0]
    assert unsigned(delivered) == unsigned(polled)  # the URLs' expiry counts from each answer
    assert delivered["code"] == 200 and delivered["message"] == "success"
    assert delivered["data"]["taskId"] == task_id
    assert delivered["data"]["state"] == "success"
    assert isinstance(delivered["data"]["resultJson"], str)
    assert sim.stats.callbacks_sent == sim.stats.callbacks_delivered == 1
    assert sim.stats.count("callback", 200) == 1


async def test_callback_reports_a_failed_task(http: aiohttp.ClientSession) -> None:
    async with Receiver() as hook, SimServer(config()) as sim:
        await submit(http, sim, callback_body(hook.url, prompt="[fail:NSFW_DETECTED]"))
        await until(lambda: len(hook.received) == 1)
    data = hook.bodies[0]["data"]
    assert data["state"] == "failed"
    assert data["failCode"] == "NSFW_DETECTED" and data["failMsg"]
    assert {"completeTime", "costTime", "createTime"} <= set(data)


async def test_non_200_answers_are_retried_until_one_succeeds(http: aiohttp.ClientSession) -> None:
    async with Receiver(script=[500, 503, 200]) as hook, SimServer(config()) as sim:
        await submit(http, sim, callback_body(hook.url))
        await until(lambda: sim.stats.callbacks_delivered == 1)
    assert len(hook.received) == 3
    assert hook.bodies[0] == hook.bodies[1] == hook.bodies[2]
    assert sim.stats.callbacks_sent == 3 and sim.stats.callbacks_failed == 2
    assert sim.stats.count("callback", 500) == sim.stats.count("callback", 503) == 1


async def test_delivery_gives_up_after_three_retries(http: aiohttp.ClientSession) -> None:
    async with Receiver(script=[500] * 10) as hook, SimServer(config()) as sim:
        await submit(http, sim, callback_body(hook.url))
        await until(lambda: sim.stats.callbacks_given_up == 1)
    assert len(hook.received) == 4  # the first attempt and 3 retries
    assert sim.stats.callbacks_delivered == 0


async def test_retry_delays_grow_as_configured(http: aiohttp.ClientSession) -> None:
    delays = (50.0, 150.0, 450.0)  # simulated seconds: 50, 150 and 450 ms at scale 0.001
    cfg = config(callback_retry_delays_s=delays)
    async with Receiver(script=[500, 500, 500]) as hook, SimServer(cfg) as sim:
        await submit(http, sim, callback_body(hook.url))
        await until(lambda: sim.stats.callbacks_delivered == 1)
    times = [t for t, _ in hook.received]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    assert gaps[0] < gaps[1] < gaps[2]
    assert all(g >= d * cfg.time_scale * 0.9 for g, d in zip(gaps, delays, strict=True))


def test_default_first_retry_is_about_30_simulated_seconds() -> None:
    cfg = SimConfig()
    assert cfg.callback_retry_delays_s[0] == 30.0
    assert list(cfg.callback_retry_delays_s) == sorted(cfg.callback_retry_delays_s)
    assert cfg.callback_timeout_s == 30.0


async def test_a_receiver_slower_than_the_timeout_gets_a_retry(
    http: aiohttp.ClientSession,
) -> None:
    cfg = config(callback_timeout_s=200.0)  # 200 ms at scale 0.001
    async with Receiver(script=[-1.0]) as hook, SimServer(cfg) as sim:
        await submit(http, sim, callback_body(hook.url))
        await until(lambda: sim.stats.callbacks_delivered == 1)
    assert len(hook.received) == 2
    assert sim.stats.count("callback", 0) == 1  # the timed-out attempt
    assert sim.stats.callbacks_failed == 1


async def test_p_cb_duplicate_delivers_the_same_payload_twice(
    http: aiohttp.ClientSession,
) -> None:
    async with Receiver() as hook, SimServer(config(p_cb_duplicate=1.0)) as sim:
        await submit(http, sim, callback_body(hook.url))
        await until(lambda: sim.stats.callbacks_delivered == 2)
    assert len(hook.received) == 2
    assert hook.bodies[0] == hook.bodies[1]


async def test_p_cb_drop_never_attempts_the_delivery(http: aiohttp.ClientSession) -> None:
    async with Receiver() as hook, SimServer(config(p_cb_drop=1.0)) as sim:
        task_id = await submit(http, sim, callback_body(hook.url))
        await until(lambda: sim.stats.callbacks_dropped == 1)
        assert (await wait_terminal(http, sim, task_id))["state"] == "success"
    assert hook.received == []
    assert sim.stats.callbacks_sent == 0


async def test_async_tasks_get_no_callback_even_with_a_url(http: aiohttp.ClientSession) -> None:
    cfg = config(pending_s=(1, 1), gen_2k_s=(30, 30))  # completion in submission order
    async with Receiver() as hook, SimServer(cfg) as sim:
        quiet = body()
        quiet.update(request_type="async", callback_url=hook.url)
        await submit(http, sim, quiet)
        loud = await submit(http, sim, callback_body(hook.url))
        await until(lambda: len(hook.received) == 1)
        await wait_terminal(http, sim, loud)
    assert [b["data"]["taskId"] for b in hook.bodies] == [loud]


async def test_stop_cancels_pending_webhooks(http: aiohttp.ClientSession) -> None:
    async with Receiver() as hook:
        async with SimServer(config(gen_2k_s=(1e6, 1e6))) as sim:
            await submit(http, sim, callback_body(hook.url))
        assert hook.received == []
        assert sim.stats.callbacks_sent == 0
