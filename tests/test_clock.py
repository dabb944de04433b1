"""Time-driven policies on a fake clock (tests/clocks.py): the request gate's pacing, the
poller's pacing, retry backoff and the completion model, with time driven by the test
instead of slept through."""

from __future__ import annotations

import asyncio
import random

import pytest
from clocks import FakeClock

from runner.api.client import ApiClient, ClientStats
from runner.api.limits import RequestGate
from runner.api.outcome import Backoff
from runner.errors import Outcome, TransientApiError
from runner.run.completion import CompletionModel, Sample
from runner.run.poller import Poller
from runner.sim import SimServer

# -- the request gate ------------------------------------------------------------------


async def test_after_a_429_the_gate_pauses_then_paces_at_half_the_rate():
    clock = FakeClock()
    gate = RequestGate(100, 1.0, burst=10, clock=clock)
    gate.throttle(None)  # no Retry-After: a short pause, period / 20
    assert gate.factor == 0.5
    for _ in range(3):
        await gate.acquire()
    pause, *spacing = clock.sleeps
    assert pause == pytest.approx(0.05)
    assert spacing == pytest.approx([1 / (100 * 0.5)] * 2, rel=0.01), "evenly, at half the rate"


async def test_retry_after_pauses_every_request_for_as_long_as_the_server_asked():
    clock = FakeClock()
    gate = RequestGate(100, 1.0, burst=10, clock=clock)
    gate.throttle(3.0)
    await gate.acquire(urgent=True)
    assert clock.sleeps[0] == pytest.approx(3.0)


async def test_no_window_holds_more_than_the_rate_and_polls_leave_room_to_submissions():
    clock = FakeClock()
    gate = RequestGate(200, 1.0, burst=200, clock=clock)  # a bucket of 20, drained at 200/s
    assert gate.limit == 198, "1 % less than the rate, for latency"
    polls = gate.room()
    assert polls == int(198 * (1 - RequestGate.SUBMIT_RESERVE))
    for _ in range(polls):
        await gate.acquire()
    assert gate.room() == 0 and not clock.sleeps, "the window is full for polls"
    for _ in range(gate.limit - polls):
        await gate.acquire(urgent=True)
    assert not clock.sleeps, "submissions still had the reserve"
    clock.advance(0.5)
    await gate.acquire(urgent=True)
    assert clock.sleeps == [pytest.approx(0.5)], "waits until the first send leaves the window"
    assert gate.room() == polls - 1, "the window moved past the first sends"


def test_the_gate_slows_once_for_a_burst_of_429s_and_recovers_with_time():
    clock = FakeClock()
    gate = RequestGate(100, 1.0, clock=clock)
    for _ in range(5):
        gate.throttle(None)
    assert gate.factor == 0.5, "one overshoot, one decrease"
    clock.advance(1.0)
    gate.throttle(None)
    assert gate.factor == pytest.approx((0.5 + RequestGate.INCREASE_PER_S) * 0.5)
    clock.advance(60.0)
    assert gate.factor == 1.0, "regained by the time that passed"


# -- poll pacing -------------------------------------------------------------------------


class _Client:
    """What the poller reads of a client while it allocates: its request counters."""

    def __init__(self) -> None:
        self.stats = ClientStats()


def _poller(clock: FakeClock, rate: float) -> Poller:
    return Poller(
        _Client(),  # type: ignore[arg-type]  # allocation never sends a request
        initial_delay_s=0.0,
        interval_s=3.0,
        jitter=0.0,
        timeout_s=600.0,
        request_rate=rate,
        request_burst=1000.0,
        clock=clock,
    )


async def test_a_late_tick_hands_out_the_polls_of_the_time_that_really_passed():
    clock = FakeClock()
    poller = _poller(clock, rate=100.0)  # 97 polls a second after the margin
    per_s = 100.0 * Poller.BUDGET_SHARE
    for i in range(500):
        poller.watch(f"t{i}", "2K")
    poller.tick(clock.monotonic(), 0.1)
    assert poller._due.qsize() == int(0.1 * per_s)
    poller.tick(clock.monotonic(), 1.0)  # the event loop ran late
    assert poller._due.qsize() == int(1.1 * per_s)


async def test_the_allocation_loop_accrues_by_the_clock_not_by_its_tick():
    class LateClock(FakeClock):
        """Every tick comes three times late; the fourth sleep lasts until cancelled."""

        def __init__(self) -> None:
            super().__init__()
            self.asleep = asyncio.Event()

        async def sleep(self, seconds: float) -> None:
            if len(self.sleeps) == 3:
                self.asleep.set()
                await asyncio.Event().wait()
            await super().sleep(seconds * 3)

    clock = LateClock()
    poller = _poller(clock, rate=100.0)
    for i in range(500):
        poller.watch(f"t{i}", "2K")
    loop = asyncio.ensure_future(poller._allocate())
    await clock.asleep.wait()  # three whole ticks have run
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    per_s = 100.0 * Poller.BUDGET_SHARE
    assert poller._due.qsize() == int(3 * 0.3 * per_s), "0.9 s of polls, not 0.3 s"


# -- backoff ---------------------------------------------------------------------------


def test_backoff_delays_grow_with_equal_jitter_up_to_the_cap():
    random.seed(5)
    backoff = Backoff(attempts=20, initial_s=0.5, max_s=30.0)
    for attempt in range(1, 20):
        top = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert top / 2 <= backoff.delay(attempt) <= top
    assert backoff.delay(3, retry_after=7.0) == 7.0, "the server's Retry-After wins"
    assert backoff.allows(19, 599.0) and not backoff.allows(20, 1.0)
    assert not backoff.allows(1, 600.0), "bounded by time as well as by attempts"


async def test_retries_end_when_the_retry_window_has_passed_on_the_clock(sim: SimServer):
    sim.config.p_5xx = 1.0  # every status answer is a 5xx: retried until the window ends
    clock = FakeClock()
    gate = RequestGate(10_000, 60.0, burst=100, clock=clock)
    client = ApiClient(sim.base_url, "k", "seedream-4-5", gate, attempts=1000, retry_window_s=60)
    async with client:
        with pytest.raises(TransientApiError) as caught:
            await client.status("task_0")
    assert caught.value.outcome is Outcome.RETRY
    tries = client.stats.requests["status"]
    assert tries == len(clock.sleeps) + 1 < 1000, "the window ended it, not the attempts"
    assert sum(clock.sleeps[:-1]) < 60.0 <= sum(clock.sleeps)
    assert max(clock.sleeps) <= 30.0


# -- the completion model ----------------------------------------------------------------


def test_a_running_task_counts_as_censored_at_its_age_by_the_clock():
    clock = FakeClock()
    model = CompletionModel(clock)
    for _ in range(10):
        model.observe("2K", 10.0)
    for _ in range(10):
        model.started("2K", Sample(clock.monotonic()))
    assert model.quantile("2K", 0.9) == 10.0, "the running ones are younger than 10 s"
    clock.advance(20.0)
    assert model.quantile("2K", 0.5) == 10.0
    assert model.quantile("2K", 0.9) is None, "half are still running at 20 s: unknown"


def test_the_estimate_is_recomputed_at_most_every_refresh_of_the_clock():
    clock = FakeClock()
    model = CompletionModel(clock)
    for _ in range(10):
        model.observe("4K", 10.0)
    assert model.quantile("4K", 0.99) == 10.0
    for _ in range(30):
        model.observe("4K", 30.0)
    assert model.quantile("4K", 0.99) == 10.0, "the table is kept for REFRESH_S"
    clock.advance(CompletionModel.REFRESH_S)
    assert model.quantile("4K", 0.99) == 30.0
