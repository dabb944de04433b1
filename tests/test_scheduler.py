"""The polling policy and the limits, as pure logic (no network, no clock asserted)."""

from __future__ import annotations

import asyncio
import random
import time

from runner.api.limits import limiter_shape
from runner.run.completion import CompletionModel, Sample
from runner.run.poller import Poller
from runner.run.schedule import Schedule, Watch
from runner.run.slots import Slots


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
        poller.schedule.model.observe(kind, rng.uniform(lo, hi))


def test_completion_model_needs_enough_samples_before_it_answers():
    model = CompletionModel()
    for i in range(CompletionModel.MIN_SAMPLES - 1):
        model.observe("2K", 25.0 + i)
    assert model.quantile("2K", 0.5) is None and model.cdf("2K", 30.0) is None
    model.observe("2K", 40.0)
    assert model.quantile("2K", 0.5) is not None and model.cdf("2K", 30.0) is not None


def test_running_tasks_keep_the_estimate_from_being_biased_short():
    """Kaplan-Meier: 20 fast completions among 200 tasks still running at an older age
    do not make the median look short; it is unknown until the data supports it."""
    model = CompletionModel()
    now = time.monotonic()
    for _ in range(200):
        model.started("2K", Sample(now - 14.0))  # running for 14 s and counting
    for i in range(20):
        sample = Sample(now - 14.0)
        model.started("2K", sample)
        model.finished("2K", sample, 13.0 + i * 0.05)
    assert model.quantile("2K", 0.05) is not None
    assert model.quantile("2K", 0.5) is None, "half are not known to be done"


def _watch(poller: Poller, kind: str, age: float, last_poll_age: float | None = None) -> Watch:
    poller.watch("t", kind, submitted_ago_s=age)
    w = poller._watches.pop("t")
    if last_poll_age is not None:
        w.last_poll = w.submitted + last_poll_age
        w.polls = 1
    return w


async def test_a_poll_is_worth_the_chance_the_task_finished_since_the_last_one():
    poller = _poller(rate=100.0)
    _learn(poller, "2K", 26.0, 38.0)
    now = time.monotonic()
    early = _watch(poller, "2K", 20.0)
    assert poller.schedule.gain(early, now) == 0.0, "nothing finishes before 26 s"
    mid = _watch(poller, "2K", 32.0)
    fresh = _watch(poller, "2K", 32.0, last_poll_age=31.0)
    assert poller.schedule.gain(mid, now) > 0.4, "half of such tasks are done by 32 s"
    assert poller.schedule.gain(fresh, now) < poller.schedule.gain(mid, now), (
        "polled a second ago: worth less"
    )


async def test_recipe_until_completion_times_are_known():
    poller = _poller(rate=100.0)
    now = time.monotonic()
    w = _watch(poller, "4K", 19.0)
    w.next_at = w.submitted + poller.schedule.first_age("4K")
    assert poller.schedule.gain(w, now) == 0.0, "the recipe waits initial_delay (20 s)"
    assert poller.schedule.gain(w, now + 2.0) >= 1.0, "then polls"


async def test_callback_mode_polls_late_once_and_then_when_the_webhook_is_overdue():
    poller = _poller(rate=100.0, callbacks=True)
    assert poller.schedule.first_age("2K") == 20.0 * Schedule.CALLBACK_FALLBACK_FACTOR
    _learn(poller, "2K", 26.0, 38.0)
    early = poller.schedule.first_age("2K")
    assert 26.0 + 0.85 * 12 < early < 38.0, "one early look where ~90 % are done"
    w = _watch(poller, "2K", early)
    overdue = poller.schedule.next_at(w, w.submitted + early) - w.submitted
    assert overdue >= 38.0 * 0.99, "then not before nearly every task is done"
    poller.schedule.lags.extend([5.0] * 50)  # webhooks arrive 5 s after completion
    assert poller.schedule.overdue_age("2K") >= overdue + 5.0, "slow webhooks widen the margin"


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
