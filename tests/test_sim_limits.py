"""Rate window, live-task limit, injected faults, the mutable config and the control
endpoints."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from simfixtures import (
    MODEL,
    body,
    fast_config,
    get_status,
    post,
    submit,
    until,
    wait_terminal,
)

from runner.sim import SimConfig, SimServer


async def test_requests_over_the_window_answer_429_with_retry_after(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(fast_config(rate=3)) as sim:
        task_id = await submit(http, sim, body())
        assert (await get_status(http, sim, task_id))[0] == 200
        assert (await get_status(http, sim, task_id))[0] == 200
        async with http.post(f"{sim.base_url}/generateTask/{MODEL}", json=body()) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "1"
            envelope = await r.json()
        assert envelope["code"] == 429 and envelope["data"]["error"] == "rate_limit"
        status, _ = await get_status(http, sim, task_id)
        assert status == 429  # both endpoints share the window
        assert sim.stats.count(status=429) == 2
        assert sim.stats.tasks_created == 1


async def test_window_slides_and_rejected_requests_count(http: aiohttp.ClientSession) -> None:
    async with SimServer(fast_config(rate=1, rate_period_s=1.0)) as sim:
        assert (await post(http, sim, body()))[0] == 200  # t = 0
        await asyncio.sleep(0.5)
        assert (await post(http, sim, body()))[0] == 429  # t = 0.5, recorded too
        await asyncio.sleep(0.7)
        # t = 1.2: the first request left the window, the rejected one (t = 0.5) has not.
        assert (await post(http, sim, body()))[0] == 429
        await asyncio.sleep(1.1)
        assert (await post(http, sim, body()))[0] == 200


async def test_window_is_per_key(http: aiohttp.ClientSession) -> None:
    async with SimServer(fast_config(rate=1)) as sim:
        assert (await post(http, sim, body()))[0] == 200
        assert (await post(http, sim, body()))[0] == 429
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer other"}) as other:
            assert (await post(other, sim, body()))[0] == 200


async def test_unauthenticated_downloads_and_control_requests_do_not_count(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(fast_config(rate=2)) as sim:
        async with aiohttp.ClientSession() as anon:
            for _ in range(3):
                assert (await post(anon, sim, body()))[0] == 401
        task_id = await submit(http, sim, body())  # request 1 of 2
        record = sim.tasks[task_id]
        await until(lambda: time.time() * 1000 >= record.complete_ms)
        url = sim.result_urls(record)[0]
        for _ in range(5):
            async with http.get(url) as r:
                assert r.status == 200
            async with http.get(f"{sim.origin}/_sim/stats") as r:
                assert r.status == 200
        assert (await get_status(http, sim, task_id))[0] == 200  # request 2 of 2
        assert (await get_status(http, sim, task_id))[0] == 429


@pytest.mark.parametrize(("value", "header"), [(0.5, "0.5"), (2.0, "2"), (0.25, "0.25")])
async def test_retry_after_sends_the_configured_value(
    http: aiohttp.ClientSession, value: float, header: str
) -> None:
    async with (
        SimServer(fast_config(rate=0, retry_after_s=value)) as sim,
        http.post(f"{sim.base_url}/generateTask/{MODEL}", json=body()) as r,
    ):
        assert r.status == 429
        assert r.headers["Retry-After"] == header


async def test_retry_after_can_be_omitted(http: aiohttp.ClientSession) -> None:
    async with (
        SimServer(fast_config(rate=0, send_retry_after=False)) as sim,
        http.post(f"{sim.base_url}/generateTask/{MODEL}", json=body()) as r,
    ):
        assert r.status == 429
        assert "Retry-After" not in r.headers


async def test_live_task_limit_answers_429_until_a_slot_frees(http: aiohttp.ClientSession) -> None:
    async with SimServer(fast_config(concurrency=2, gen_2k_s=(60, 60))) as sim:
        first = await submit(http, sim, body())
        second = await submit(http, sim, body())
        status, envelope = await post(http, sim, body())
        assert status == 429
        assert envelope["data"]["error"] == "concurrency_limit"
        assert sim.stats.live == 2 and sim.stats.peak_live == 2
        await wait_terminal(http, sim, first)
        await wait_terminal(http, sim, second)
        assert sim.stats.live == 0
        assert (await post(http, sim, body()))[0] == 200
        assert sim.stats.tasks_created == 3
        assert sim.stats.peak_live == 2


async def test_live_limit_is_per_key(http: aiohttp.ClientSession) -> None:
    async with SimServer(fast_config(concurrency=1, gen_2k_s=(1e6, 1e6))) as sim:
        await submit(http, sim, body())
        assert (await post(http, sim, body()))[0] == 429
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer other"}) as other:
            assert (await post(other, sim, body()))[0] == 200
        assert sim.stats.peak_live == 2


async def test_stuck_tasks_hold_their_slot_forever(http: aiohttp.ClientSession) -> None:
    async with SimServer(fast_config(concurrency=1, p_stuck=1.0)) as sim:
        task_id = await submit(http, sim, body())
        await until(lambda: sim.tasks[task_id].complete_ms < time.time() * 1000)
        assert (await post(http, sim, body()))[0] == 429
        assert sim.stats.live == 1


def assert_refused_by_fault(sim: SimServer, fault: str, times: int) -> None:
    """The injected ``fault`` answered ``times`` requests, and no task was created."""
    assert sim.stats.tasks_created == 0
    assert sim.stats.faults[fault] == times


async def test_p_429_injects_429_before_any_side_effect(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    fast_sim.config.p_429 = 1.0
    async with http.post(f"{fast_sim.base_url}/generateTask/{MODEL}", json=body()) as r:
        assert r.status == 429
        assert "Retry-After" in r.headers
    assert_refused_by_fault(fast_sim, "429", 1)


async def test_p_5xx_injects_server_errors_in_the_envelope(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    fast_sim.config.p_5xx = 1.0
    seen = set()
    for _ in range(20):
        status, envelope = await post(http, fast_sim, body())
        assert envelope["code"] == status
        seen.add(status)
    assert seen <= {500, 502, 503, 504} and len(seen) > 1
    assert_refused_by_fault(fast_sim, "5xx", 20)


async def test_p_reset_drops_the_connection_and_creates_nothing(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    fast_sim.config.p_reset = 1.0
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, fast_sim, body())
    with pytest.raises(aiohttp.ClientConnectionError):
        await get_status(http, fast_sim, "task_x")
    assert fast_sim.stats.tasks_created == 0
    assert fast_sim.stats.count("generate", 0) == 1
    assert fast_sim.stats.count("status", 0) >= 1  # aiohttp retries an idempotent GET once
    fast_sim.config.p_reset = 0.0
    assert (await post(http, fast_sim, body()))[0] == 200  # the next request is answered


async def test_p_reset_after_creates_the_task_but_loses_the_answer(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    fast_sim.config.p_reset_after = 1.0
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, fast_sim, body(prompt="lost answer"))
    assert fast_sim.stats.tasks_created == 1
    assert fast_sim.stats.submissions_per_prompt["lost answer"] == 1
    assert fast_sim.stats.count("generate", 0) == 1
    assert fast_sim.stats.faults["reset_after"] == 1


async def test_p_slow_delays_the_answer_past_a_client_timeout(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    fast_sim.config.p_slow, fast_sim.config.slow_s = 1.0, 0.3
    timeout = aiohttp.ClientTimeout(total=0.05)
    url = f"{fast_sim.base_url}/generateTask/{MODEL}"
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(url, json=body(prompt="impatient"), timeout=timeout) as r:
            await r.read()
    # The request had arrived: the task exists although its client gave up on the answer.
    await until(lambda: fast_sim.stats.tasks_created == 1)
    assert fast_sim.stats.submissions_per_prompt["impatient"] == 1
    assert (await post(http, fast_sim, body()))[0] == 200  # a patient client gets its answer
    assert fast_sim.stats.faults["slow"] == 2


async def test_config_changes_take_effect_on_the_next_request(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    fast_sim.config.p_5xx = 1.0
    assert (await post(http, fast_sim, body()))[0] >= 500
    fast_sim.config.p_5xx = 0.0
    assert (await post(http, fast_sim, body()))[0] == 200


async def test_control_endpoints_report_stats_and_change_config(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    await submit(http, fast_sim, body(prompt="one"))
    async with http.get(f"{fast_sim.origin}/_sim/stats") as r:
        stats = await r.json()
    assert stats["requests"] == {"generate": {"200": 1}}
    assert stats["tasks_created"] == 1 and stats["submissions_per_prompt"] == {"one": 1}
    async with http.post(
        f"{fast_sim.origin}/_sim/config", json={"p_5xx": 1.0, "gen_2k_s": [1, 2]}
    ) as r:
        assert r.status == 200
        assert (await r.json())["p_5xx"] == 1.0
    assert fast_sim.config.p_5xx == 1.0 and fast_sim.config.gen_2k_s == (1.0, 2.0)
    assert (await post(http, fast_sim, body()))[0] >= 500
    for raw, field in (
        (b'{"p_9xx": 1}', "p_9xx"),
        (b'{"p_429": 2}', "p_429"),
        (b"[1]", "body"),
        (b"{", "body"),
    ):
        async with http.post(f"{fast_sim.origin}/_sim/config", data=raw) as r:
            assert r.status == 400
            assert (await r.json())["error"] == field
    async with http.get(f"{fast_sim.origin}/_sim/config") as r:
        assert (await r.json())["p_429"] == 0.0  # the rejected change left nothing behind
    assert fast_sim.stats.count() == 2  # control requests are not counted


async def test_control_task_endpoint_shows_the_record(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    task_id = await submit(http, fast_sim, body(max_images=2))
    await wait_terminal(http, fast_sim, task_id)
    async with http.get(f"{fast_sim.origin}/_sim/tasks/{task_id}") as r:
        record = await r.json()
    assert record["sha256"] == fast_sim.tasks[task_id].sha256
    assert record["status"]["state"] == "success"
    async with http.get(f"{fast_sim.origin}/_sim/tasks/task_nope") as r:
        assert r.status == 404


def test_config_rejects_bad_values_naming_the_field() -> None:
    cfg = SimConfig()
    for changes in (
        {"p_5xx": 1.5},
        {"rate": 1.5},
        {"rate": True},
        {"pending_s": [3, 1]},
        {"gen_4k_s": [1]},
        {"time_scale": -1},
        {"api_key": ""},
        {"send_retry_after": 1},
        {"callback_retry_delays_s": "30"},
    ):
        with pytest.raises(ValueError, match=next(iter(changes))):
            cfg.update(changes)
    assert cfg == SimConfig()
    with pytest.raises(ValueError, match="p_reset"):
        SimConfig(p_reset=-0.1)


async def test_stats_count_filters_by_endpoint_and_status(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    task_id = await submit(http, fast_sim, body())
    await get_status(http, fast_sim, task_id)
    await get_status(http, fast_sim, "task_missing")
    assert fast_sim.stats.count() == 3
    assert fast_sim.stats.count("status") == 2
    assert fast_sim.stats.count(status=404) == 1
    assert fast_sim.stats.count("generate", 200) == 1
    assert fast_sim.stats.to_dict()["requests"]["status"] == {"200": 1, "404": 1}


def test_defaults_are_the_documented_limits_and_timings() -> None:
    cfg = SimConfig()
    assert (cfg.rate, cfg.rate_period_s, cfg.concurrency) == (10_000, 60.0, 1000)
    assert (cfg.gen_2k_s, cfg.gen_4k_s) == ((25.0, 35.0), (40.0, 55.0))
    assert cfg.url_ttl_s == cfg.retention_s == 15 * 24 * 3600  # the Seedream 4.5 page's figure
    assert cfg.time_scale == 1.0 and cfg.api_key is None
    assert cfg.p_429 == cfg.p_5xx == cfg.p_reset == cfg.p_fail == 0.0


async def test_stop_does_not_wait_for_a_slow_answer(http: aiohttp.ClientSession) -> None:
    sim = await SimServer(fast_config(p_slow=1.0, slow_s=60.0)).start()
    pending = asyncio.ensure_future(post(http, sim, body()))
    await until(lambda: sim.stats.faults["slow"] == 1)
    await asyncio.wait_for(sim.stop(), 10)  # far less than the 60 s the answer would take
    with pytest.raises(aiohttp.ClientConnectionError):
        await pending


async def test_p_5xx_after_create_bills_the_task_then_answers_5xx(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    fast_sim.config.p_5xx_after_create = 1.0
    seen = set()
    for _ in range(12):
        status, envelope = await post(http, fast_sim, body(prompt="answer lost", max_images=2))
        assert envelope["code"] == status and envelope["data"] == {}
        assert "taskId" not in envelope["data"]
        seen.add(status)
    assert seen <= {500, 502, 503, 504} and len(seen) > 1
    assert fast_sim.stats.tasks_created == 12
    assert fast_sim.stats.submissions_per_prompt["answer lost"] == 12
    assert fast_sim.stats.credits_spent == 24
    assert fast_sim.stats.faults["5xx_after_create"] == 12
    await until(lambda: fast_sim.stats.images_billed == 24)  # the tasks run and are billed


async def test_bad_status_first_gives_each_task_n_unreadable_answers_then_good_ones(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(fast_config(bad_status_first=3)) as sim:
        first, second = await submit(http, sim, body()), await submit(http, sim, body())
        url = f"{sim.base_url}/statusTask/{MODEL}"
        for task_id in (first, second):
            answers = []
            for _ in range(5):
                async with http.get(url, params={"taskId": task_id}) as r:
                    assert r.status == 200
                    answers.append(await r.read())
            with pytest.raises(ValueError):
                json.loads(answers[0])  # not JSON at all
            assert "data" not in json.loads(answers[1])  # an envelope without data
            with pytest.raises(ValueError):
                json.loads(answers[2])
            for good in answers[3:]:
                assert json.loads(good)["data"]["taskId"] == task_id
        assert sim.stats.faults["bad_status"] == 6
        assert (await get_status(http, sim, "task_unknown"))[0] == 404  # not a task's answer
        assert sim.stats.faults["bad_status"] == 6


async def test_foreign_live_slots_give_429_below_the_own_limit_until_released(
    http: aiohttp.ClientSession,
) -> None:
    # foreign_hold_s 300 = 0.3 s at time scale 0.001; generation never ends on its own.
    cfg = fast_config(concurrency=3, foreign_live=2, foreign_hold_s=300, gen_2k_s=(1e6, 1e6))
    async with SimServer(cfg) as sim:
        assert (await post(http, sim, body()))[0] == 200
        status, envelope = await post(http, sim, body())
        assert status == 429 and envelope["data"]["error"] == "concurrency_limit"
        assert "concurrency limit" in envelope["message"]
        assert "2 held by another client" in envelope["message"]
        assert sim.stats.live == 1 and sim.stats.faults["foreign_live"] == 1
        deadline = time.monotonic() + 10
        while (await post(http, sim, body()))[0] == 429:  # until the foreign slots are freed
            assert time.monotonic() < deadline, "foreign slots were never released"
            await asyncio.sleep(0.01)
        assert (await post(http, sim, body()))[0] == 200
        status, envelope = await post(http, sim, body())  # now the key's own 3 fill the limit
        assert status == 429 and "another client" not in envelope["message"]


async def test_foreign_live_is_held_forever_when_foreign_hold_is_0(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(fast_config(concurrency=2, foreign_live=2)) as sim:
        await asyncio.sleep(0.05)  # 50 simulated seconds
        status, envelope = await post(http, sim, body())
        assert status == 429 and "2 held by another client" in envelope["message"]
        assert sim.stats.tasks_created == 0


async def test_foreign_hold_counts_from_the_last_change_of_the_knobs(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(fast_config(concurrency=1, foreign_hold_s=200)) as sim:
        await asyncio.sleep(0.3)  # 300 simulated seconds: longer than the hold since start
        async with http.post(f"{sim.origin}/_sim/config", json={"foreign_live": 1}) as r:
            assert r.status == 200
        status, envelope = await post(http, sim, body())
        assert status == 429 and "1 held by another client" in envelope["message"]
