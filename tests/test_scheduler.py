"""The polling policy and the limits, as pure logic (no network, no clock asserted)."""

from __future__ import annotations

import asyncio
import random

from runner.limits import Slots, limiter_shape
from runner.scheduler import CompletionModel, Poller


def _poller(rate: float, *, callbacks: bool = False) -> Poller:
    return Poller(
        None,  # type: ignore[arg-type]  # the policy never touches the client
        initial_delay_s=20.0,
        interval_s=3.0,
        jitter=0.0,
        timeout_s=600.0,
        callbacks=callbacks,
        request_rate=rate,
    )


def _learn(poller: Poller, kind: object, lo: float, hi: float, n: int = 200) -> None:
    rng = random.Random(3)
    for _ in range(n):
        poller.model.observe(kind, rng.uniform(lo, hi))


def test_completion_model_needs_enough_samples_before_it_answers():
    model = CompletionModel()
    for i in range(CompletionModel.MIN_SAMPLES - 1):
        model.observe("2K", 25.0 + i)
    assert model.quantile("2K", 0.5) is None and model.mean("2K") is None
    model.observe("2K", 40.0)
    assert model.quantile("2K", 0.5) is not None and model.mean("2K") is not None


def test_the_ladder_is_as_long_as_the_request_budget_affords():
    poller = _poller(rate=10000 / 60)
    _learn(poller, "2K", 26.0, 38.0)
    poller._watches = {str(i): None for i in range(1000)}  # type: ignore[misc]
    full = poller.rungs("2K")
    # 166/s x 0.85 x 32 s / 1,000 live tasks = 4.5 requests: 1 submit + 3.5 polls
    assert full == 6
    assert (full + 1) / 2 + 1 <= 5, "planned requests per task stay within the budget"
    poller._watches = {str(i): None for i in range(100)}  # type: ignore[misc]
    assert poller.rungs("2K") > full, "fewer live tasks buy a finer ladder"


async def test_first_poll_follows_the_recipe_until_completions_are_known():
    poller = _poller(rate=100.0)
    assert poller._first_age("4K") == 20.0
    _learn(poller, "4K", 40.0, 55.0)
    first = poller._first_age("4K")
    assert 40.0 < first < 55.0, "the first poll moves to where 4K tasks finish"


def test_next_poll_aims_at_the_next_rung_above_the_task_age():
    poller = _poller(rate=10000 / 60)
    _learn(poller, "2K", 26.0, 38.0)
    w = type("W", (), {"submitted": 0.0, "kind": "2K", "polls": 1})()
    ages = []
    age = poller._first_age("2K")
    for _ in range(5):
        ages.append(age)
        age += poller._next_delay(w, age)  # type: ignore[arg-type]
    assert ages == sorted(ages) and len(set(ages)) == 5
    assert ages[0] >= 26.0 and ages[-1] <= 38.0 + 3.0


def test_callback_mode_polls_late_once_and_then_when_the_webhook_is_overdue():
    poller = _poller(rate=100.0, callbacks=True)
    assert poller._first_age("2K") == 20.0 * Poller.CALLBACK_FALLBACK_FACTOR
    _learn(poller, "2K", 26.0, 38.0)
    early = poller._first_age("2K")
    assert 26.0 + 0.85 * 12 < early < 38.0, "one early look where ~90 % are done"
    w = type("W", (), {"submitted": 0.0, "kind": "2K", "polls": 1})()
    overdue = early + poller._next_delay(w, early)  # type: ignore[arg-type]
    assert overdue >= 38.0 * 0.99, "then not before nearly every task is done"
    poller.lags.extend([5.0] * 50)  # webhooks arrive 5 s after completion
    assert poller._overdue_age("2K") >= overdue + 5.0, "slow webhooks widen the margin"


def test_limiter_shape_keeps_every_window_within_the_rate():
    for rate, period, burst in [(10000, 60.0, 1000), (40, 1.0, 25), (3, 1.0, 100)]:
        capacity, seconds = limiter_shape(rate, period, burst)
        drained_per_window = capacity / seconds * period
        assert capacity + drained_per_window <= rate + 1e-6
        assert capacity <= max(1, rate // 10)


async def test_slots_hand_over_in_order_and_close_wakes_waiters():
    slots = Slots(1)
    assert await slots.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        got = await slots.acquire()
        order.append(i if got else -i)

    tasks = [asyncio.ensure_future(waiter(i)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    slots.release()  # goes to waiter 1
    await asyncio.sleep(0)
    slots.close()  # 2 and 3 are told no
    await asyncio.gather(*tasks)
    assert order == [1, -2, -3]
    assert slots.used == 1
    slots.release()
    await slots.wait_idle()
    assert slots.used == 0
