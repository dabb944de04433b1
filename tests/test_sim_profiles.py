"""Duration profiles (``profile``): each draws task durations in the ranges and shares it
promises, seen as ``completeTime - createTime`` in status answers over HTTP; ``drift``
switches after ``drift_after_s``; an unknown profile is refused by name.

A task's duration is its pending time (1-3 s, never reshaped) plus its generation time.
At time scale 0.01 one simulated second is 10 ms, so the answers' whole milliseconds
measure durations to 0.1 simulated seconds: the bounds below allow 0.2 s for rounding.
"""

from __future__ import annotations

import time

import aiohttp
from simfixtures import body, fast_config, get_status, submit, until

from runner.sim import SimConfig, SimServer
from runner.sim.tasks import SUCCESS

SCALE = 0.01
ROUNDING = 0.2  # simulated seconds: two values rounded to whole milliseconds at SCALE
PENDING = (1.0, 3.0)


def profile_config(**overrides: object) -> SimConfig:
    return fast_config(time_scale=SCALE, **overrides)


def bounds(low: float, high: float) -> tuple[float, float]:
    """Total duration bounds of a generation range ``low``-``high``."""
    return PENDING[0] + low - ROUNDING, PENDING[1] + high + ROUNDING


def within(value: float, span: tuple[float, float]) -> bool:
    return span[0] <= value <= span[1]


async def durations(
    http: aiohttp.ClientSession, sim: SimServer, n: int, resolution: str = "2K"
) -> list[float]:
    """Submit ``n`` tasks one after another, wait until every task of the server is
    finished, and return each one's ``completeTime - createTime`` from its status answer,
    in simulated seconds."""
    ids = [
        await submit(http, sim, body(prompt=f"item {i}", resolution=resolution)) for i in range(n)
    ]
    await until(lambda: all(t.state == SUCCESS for t in sim.tasks.values()), limit_s=30)
    out = []
    for task_id in ids:
        status, envelope = await get_status(http, sim, task_id)
        assert status == 200 and envelope["data"]["state"] == "success", envelope
        data = envelope["data"]
        out.append((data["completeTime"] - data["createTime"]) / 1000 / SCALE)
    return out


async def test_docs_is_the_default_and_draws_uniformly_in_the_documented_ranges(
    http: aiohttp.ClientSession,
) -> None:
    assert SimConfig().profile == "docs" and SimConfig().drift_after_s == 90.0
    async with SimServer(profile_config()) as sim:
        two_k = await durations(http, sim, 150)
        four_k = await durations(http, sim, 150, "4K")
    assert all(within(d, bounds(25, 35)) for d in two_k), (min(two_k), max(two_k))
    assert all(within(d, bounds(40, 55)) for d in four_k), (min(four_k), max(four_k))
    # Uniform: the whole range is used, not one corner of it.
    assert min(two_k) < 28 and max(two_k) > 36
    assert min(four_k) < 44 and max(four_k) > 54


async def test_slow_takes_twice_the_documented_times(http: aiohttp.ClientSession) -> None:
    async with SimServer(profile_config(profile="slow")) as sim:
        two_k = await durations(http, sim, 100)
        four_k = await durations(http, sim, 100, "4K")
    assert all(within(d, bounds(50, 70)) for d in two_k), (min(two_k), max(two_k))
    assert all(within(d, bounds(80, 110)) for d in four_k), (min(four_k), max(four_k))
    assert min(two_k) < 56 and max(four_k) > 104


async def test_mixture_is_half_fast_half_slow_within_one_kind(http: aiohttp.ClientSession) -> None:
    async with SimServer(profile_config(profile="mixture")) as sim:
        two_k = await durations(http, sim, 400)
        four_k = await durations(http, sim, 100, "4K")
    fast_2k, slow_2k = bounds(12.5, 17.5), bounds(30, 42)
    assert all(within(d, fast_2k) or within(d, slow_2k) for d in two_k), sorted(two_k)
    fast_share = sum(within(d, fast_2k) for d in two_k) / len(two_k)
    assert 0.4 <= fast_share <= 0.6  # 50 %: four standard deviations either side at n=400
    fast_4k, slow_4k = bounds(20, 27.5), bounds(48, 66)
    assert all(within(d, fast_4k) or within(d, slow_4k) for d in four_k), sorted(four_k)
    assert 0.3 <= sum(within(d, fast_4k) for d in four_k) / len(four_k) <= 0.7


async def test_stragglers_are_two_percent_taking_three_to_five_times_as_long(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(profile_config(profile="stragglers")) as sim:
        two_k = await durations(http, sim, 1000)
    normal, straggler = bounds(25, 35), bounds(25 * 3, 35 * 5)
    stragglers = [d for d in two_k if not within(d, normal)]
    assert all(within(d, straggler) for d in stragglers), stragglers
    # 2 % of 1,000: 20 expected, standard deviation 4.4.
    assert 5 <= len(stragglers) <= 40, len(stragglers)


async def test_drift_switches_to_one_point_six_times_after_drift_after(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(profile_config(profile="drift", drift_after_s=1e6)) as sim:
        before = await durations(http, sim, 40)
        async with http.post(f"{sim.origin}/_sim/config", json={"drift_after_s": 0}) as r:
            assert r.status == 200
        after = await durations(http, sim, 40)
        after_4k = await durations(http, sim, 20, "4K")
    assert all(within(d, bounds(25, 35)) for d in before), sorted(before)
    assert all(within(d, bounds(40, 56)) for d in after), sorted(after)
    assert all(within(d, bounds(64, 88)) for d in after_4k), sorted(after_4k)


async def test_setting_the_profile_restarts_the_drift_clock(http: aiohttp.ClientSession) -> None:
    """Tasks created less than drift_after_s after the profile was set follow the docs,
    those created later take 1.6 times as long. The moment it was set lies between the
    POST and its answer; tasks created too close to the switch to tell are not judged."""
    drift_after = 30.0  # 0.3 s real
    async with SimServer(profile_config(profile="docs", drift_after_s=drift_after)) as sim:
        for _ in range(2):  # the second time restarts the clock of a drift already running
            sent = time.time() * 1000
            async with http.post(f"{sim.origin}/_sim/config", json={"profile": "drift"}) as r:
                assert r.status == 200
            answered = time.time() * 1000
            ids = [await submit(http, sim, body(prompt=f"early {i}")) for i in range(5)]
            # 2 ms more: createTime is the server's clock cut to whole milliseconds.
            switch_ms = drift_after * SCALE * 1000
            late_from = answered + switch_ms + 2
            await until(lambda: time.time() * 1000 > late_from)  # noqa: B023 (used at once)
            ids += [await submit(http, sim, body(prompt=f"late {i}")) for i in range(5)]
            await until(lambda: all(t.state == SUCCESS for t in sim.tasks.values()), 30)
            judged = {"docs": 0, "drift": 0}
            for task_id in ids:
                data = (await get_status(http, sim, task_id))[1]["data"]
                took = (data["completeTime"] - data["createTime"]) / 1000 / SCALE
                # The server's age of the profile at creation lies in [age_min, age_max].
                age_max = data["createTime"] + 1 - sent
                age_min = data["createTime"] - answered
                if age_max < switch_ms:
                    assert within(took, bounds(25, 35)), (took, age_max)
                    judged["docs"] += 1
                elif age_min >= switch_ms:
                    assert within(took, bounds(40, 56)), (took, age_min)
                    judged["drift"] += 1
            assert judged["drift"] == 5 and judged["docs"] >= 1, judged


async def test_a_seed_replays_the_same_profile_durations(http: aiohttp.ClientSession) -> None:
    runs = []
    for _ in range(2):
        async with SimServer(profile_config(profile="mixture", seed=99)) as sim:
            runs.append(await durations(http, sim, 30))
    assert runs[0] == runs[1]


async def test_an_unknown_profile_is_refused_by_name_and_changes_nothing(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(profile_config(profile="slow")) as sim:
        for bad in ("fast", None, 3, "DOCS"):
            async with http.post(
                f"{sim.origin}/_sim/config", json={"profile": bad, "p_5xx": 0.5}
            ) as r:
                assert r.status == 400
                answer = await r.json()
            assert answer["error"] == "profile"
            assert "docs, slow, mixture, drift, stragglers" in answer["message"]
            assert repr(bad) in answer["message"]
        assert sim.config.profile == "slow" and sim.config.p_5xx == 0.0
    try:
        SimConfig(profile="fast")
    except ValueError as exc:
        assert str(exc).startswith("profile: one of docs, slow")
    else:
        raise AssertionError("SimConfig accepted profile='fast'")
