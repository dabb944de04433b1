"""The polling policy and the limits, as pure logic (no network, no clock asserted)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from clocks import FakeClock

from runner.api.answers import TaskState, TaskStatus
from runner.api.client import ClientStats
from runner.api.limits import RequestGate, SendLog, limiter_shape
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


def _seed(target: Poller | CompletionModel, n: int = 300, seed: int = 2) -> None:
    """``n`` tasks of kind 2K that earlier runs finished in 25-35 s, one created a
    millisecond after the other."""
    rng = random.Random(seed)
    for i in range(n):
        created = 1_000_000 + i
        target.seed("2K", created, created + int(rng.uniform(25_000, 35_000)))


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


def test_limiter_shape_allows_half_the_window_then_the_full_rate():
    for rate, period in [(10000, 60.0), (40, 1.0), (3, 1.0), (1, 1.0)]:
        capacity, seconds = limiter_shape(rate, period)
        assert capacity == max(1, rate // 2)
        assert capacity / seconds * period == pytest.approx(rate), "the full rate, sustained"


def test_a_run_after_another_that_left_no_record_assumes_the_most_it_could_have_sent():
    fresh = RequestGate(10000, 60.0, burst=1000)
    full = fresh.room()
    fresh.follow(None)
    assert fresh.room() == full, "no earlier run: the whole window"
    old = RequestGate(10000, 60.0, burst=1000)
    old.follow(time.time() - 120.0)
    assert old.room() == full, "an earlier run two minutes ago: nothing of it counts"
    recent = RequestGate(10000, 60.0, burst=1000)
    recent.follow(time.time() - 15.0)
    assert recent.room() == 0, "a burst at its end, the full pace before: a whole window"
    clock = FakeClock()
    gate = RequestGate(10000, 60.0, burst=1000, clock=clock)
    gate.follow(clock.wall() - 15.0)
    clock.advance(44.9)
    assert gate.room() <= full - int(gate.capacity), "the burst at its end still counts"
    clock.advance(0.2)
    assert gate.room() == full, "then nothing of it does"


async def _send(gate: RequestGate, n: int) -> None:
    for _ in range(n):
        await gate.acquire()


async def test_a_run_counts_exactly_what_the_earlier_runs_saved_sends_still_hold():
    clock = FakeClock()
    earlier = RequestGate(10000, 60.0, burst=1000, clock=clock)
    await _send(earlier, 100)
    clock.advance(10.0)
    await _send(earlier, 50)
    clock.advance(10.0)
    counts = earlier.sends()
    assert sum(counts) == 150, "every request of the window"
    assert counts[99] == 50 and counts[199] == 100, "by age in 0.1 s steps, never older"
    log = SendLog(clock.wall(), 0.1, tuple(counts), final=True)
    clock.advance(5.0)
    later = RequestGate(10000, 60.0, burst=1000, clock=clock)
    full = later.room()
    later.follow(clock.wall() - 5.0, log)
    assert later.room() == full - 150, "exactly the earlier run's requests, no full window"
    clock.advance(34.95)
    assert later.room() == full - 150, "not one leaves before it really does"
    clock.advance(0.2)  # the first 100 left the window (a step late at most)
    assert later.room() == full - 50
    clock.advance(10.0)
    assert later.room() == full


def test_what_a_killed_run_did_not_record_counts_as_the_most_it_could_have_sent():
    clock = FakeClock()
    log = SendLog(clock.wall() - 2.0, 0.1, (0, 10), final=False)
    gate = RequestGate(10000, 60.0, burst=1000, clock=clock)
    full = gate.room()
    assert gate.unsaved_max == 100
    gate.follow(log.at, log)
    assert gate.room() == full - 10 - 100, "at most unsaved_max after its last save"
    clock.advance(60.0 - 2.0 + 0.15)  # the recorded ten leave the window
    assert gate.room() == full - 100, "the unrecorded, taken as sent a save later, stay"
    clock.advance(1.0)
    assert gate.room() == full
    stopped_saving = RequestGate(10000, 60.0, burst=1000, clock=clock)
    log = SendLog(clock.wall() - 20.0, 0.1, (0, 10), final=False)
    stopped_saving.follow(clock.wall() - 1.0, log)  # its ledger went on 19 s longer
    assert stopped_saving.room() == 0, "a record not kept up: the most it could have sent"
    stale = RequestGate(10000, 60.0, burst=1000, clock=clock)
    stale.follow(clock.wall() - 15.0, SendLog(clock.wall() - 300.0, 0.1, (5000,), True))
    assert stale.room() == 0, "an old log: no help"
    huge = RequestGate(10000, 60.0, burst=1000, clock=clock)
    huge.follow(None, SendLog(clock.wall(), 0.1, (1_000_000,) * 600, True))
    assert huge.room() == 0 and len(huge._sent) == huge.limit, "never more than a window"


async def test_the_gate_asks_for_a_save_before_more_than_unsaved_max_leave_unrecorded():
    clock = FakeClock()
    gate = RequestGate(10000, 60.0, burst=1000, clock=clock)
    saved: list[int] = []
    gate.on_unsaved = lambda: saved.append(sum(gate.sends()))
    await _send(gate, 250)
    assert saved == [100, 200], "a save as the 100th and the 200th go"


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


# -- warm start, exploring, fixed schedule --------------------------------------------


def test_seeds_are_the_last_created_before_a_task_left_unfinished():
    model = CompletionModel()
    # An earlier run: a task created every second; the 100 oldest took 30 s, the rest 20 s.
    for i in range(500):
        created = 1_000_000 + i * 1000
        model.seed("2K", created, created + (30_000 if i < 100 else 20_000))
    assert model.seeds("2K") == CompletionModel.SEEDS
    assert model.quantile("2K", 0.99) == 20.0, "the oldest (30 s) gave way to later ones"
    # The run was stopped with a task created at 500 s in flight: of the tasks created
    # since, only the fast ones were seen to finish; they would bias the estimate short.
    for i in range(500, 520):
        created = 1_000_000 + i * 1000
        model.seed("2K", created, created + 5_000)
    assert model.quantile("2K", 0.01) == 5.0
    model.unfinished([1_000_000 + 500 * 1000])
    assert model.quantile("2K", 0.01) == 20.0, "created since the unfinished task: not counted"
    model.unfinished([1_000_000])  # stuck since the start: the run went on for minutes
    assert model.quantile("2K", 0.01) == 5.0, "an old unfinished task says nothing"
    for _ in range(CompletionModel.SEEDS):
        model.observe("2K", 40.0)
    model._tables.clear()
    assert model.seeds("2K") == 0, "the run has its own completions now"
    assert model.quantile("2K", 0.01) == 40.0, "and they alone decide"


def test_seeds_from_the_tail_of_a_wave_do_not_stand_for_the_whole():
    """A run's last completions are its last wave's slowest tasks: chosen by completion
    time, a warm start would expect every task to be slow."""
    model = CompletionModel()
    rng = random.Random(3)
    # Three waves of 1,000 tasks created within a second, 25-35 s each, handed over in
    # the order they finished (the ledger's).
    tasks = [
        (created, created + int(rng.uniform(25_000, 35_000)))
        for wave in range(3)
        for created in range(1_000_000 + wave * 40_000, 1_001_000 + wave * 40_000)
    ]
    for created, completed in sorted(tasks, key=lambda t: t[1]):
        model.seed("2K", created, completed)
    median = model.quantile("2K", 0.5)
    assert median is not None and 28.5 < median < 31.5, "the median of 25-35 s"


def test_seeds_give_way_at_once_when_today_is_faster():
    model = CompletionModel()
    _seed(model, seed=4)
    rng = random.Random(4)
    assert model.seeds("2K") == 300
    for _ in range(20):
        model.observe("2K", rng.uniform(2.0, 3.0))  # today: ten times faster
    median = model.quantile("2K", 0.5)
    assert median is not None and median < 3.0, "today's completions decide"
    assert model.seeds("2K") == 0


async def test_scouts_of_a_warm_kind_look_where_earlier_runs_say_nothing_finishes_yet():
    warm = _poller(rate=100.0)
    _seed(warm, seed=5)
    scout, other = _watch(warm, "2K", 12.0), _watch(warm, "2K", 12.0)
    scout.scout, other.scout = True, False
    now = time.monotonic()
    assert warm.schedule.gain(scout, now) == 0.0, "the estimate rules it out"
    assert warm.schedule.explore(scout, now) > 0.0, "a scout looks with spare budget"
    assert warm.schedule.explore(other, now) == 0.0
    learnt = _poller(rate=100.0)
    _learn(learnt, "2K", 25.0, 35.0)  # today's own completions: no need to look
    mine = _watch(learnt, "2K", 12.0)
    mine.scout = True
    assert learnt.schedule.explore(mine, now) == 0.0


async def test_a_warm_run_polls_its_first_wave_where_earlier_runs_finished():
    warm, cold = _poller(rate=100.0), _poller(rate=100.0)
    _seed(warm, n=200, seed=1)
    now = time.monotonic()
    w_warm, w_cold = _watch(warm, "2K", 30.0), _watch(cold, "2K", 30.0)
    w_cold.next_at = w_cold.submitted + 2 * cold.schedule.first_age("2K")  # not a scout
    assert warm.schedule.gain(w_warm, now) > 0.4, "about half are done by 30 s"
    assert cold.schedule.gain(w_cold, now) == 0.0, "cold: waits for the scouts"


class _Client:
    """What the poller reads of a client while it allocates: its request counters."""

    def __init__(self) -> None:
        self.stats = ClientStats()


def _allocating(**options: Any) -> Poller:
    """A poller to tick by hand: the recipe 20 s / 3 s, 100 requests a second."""
    return Poller(
        _Client(),  # type: ignore[arg-type]  # allocation never sends a request
        initial_delay_s=20.0,
        interval_s=3.0,
        jitter=0.0,
        timeout_s=600.0,
        request_rate=100.0,
        request_burst=1000.0,
        **options,
    )


def _young_tasks(*, adaptive: bool, room: int | None = None) -> Poller:
    poller = _allocating(window_room=None if room is None else (lambda: room), adaptive=adaptive)
    for i in range(500):
        poller.watch(f"t{i}", "2K", submitted_ago_s=5.0)  # nothing due for 15 s
    return poller


def _wave(*, warm: bool) -> Poller:
    """1,000 tasks submitted together 20 s ago, nothing due yet; ``warm``: an earlier
    run's timings (25-35 s) say when they will finish."""
    poller = _allocating()
    if warm:
        _seed(poller)
    for i in range(1000):
        poller.watch(f"t{i}", "2K", submitted_ago_s=20.0)
    return poller


async def test_a_wave_expected_soon_deepens_the_bank_and_it_is_handed_out_over_seconds():
    now = time.monotonic()
    warm, cold = _wave(warm=True), _wave(warm=False)
    for poller in (warm, cold):
        poller.tick(now, 60.0)  # a quiet minute: nothing can have finished by 20 s
        assert poller._due.qsize() == 0
    base = 1000 * 0.9  # the bank without a wave in sight: 90 % of the opening burst
    assert cold._tokens <= base, "cold: nothing says when the wave comes"
    expected = warm._expected_completions(now, Poller.FIRST_WAVE_S)
    assert expected > 990, "25-35 s tasks 20 s old all end within 20 s"
    assert warm._tokens == pytest.approx(Poller.FIRST_WAVE_BANK_PER_COMPLETION * expected), (
        "before the run's first completion, banked for its first wave"
    )
    # 10 s later, most tasks are worth a poll: the bank goes out over RELEASE_S, not at once.
    banked = warm._tokens
    warm.tick(now + 10.0, 0.1)
    sent = warm._due.qsize()
    rate = 100.0 * Poller.BUDGET_SHARE
    assert 0 < sent <= (rate + banked / Poller.RELEASE_S) * 0.1 + 1
    assert sent < banked / 10, "one tick does not spend the bank"


async def test_after_the_first_completion_the_bank_is_for_the_next_seconds_and_never_forfeited():
    now = time.monotonic()
    warm = _wave(warm=True)
    warm.tick(now, 60.0)
    banked = warm._tokens
    created = int(warm.clock.wall() * 1000) - 20_000
    done = TaskStatus(
        "t0", TaskState.SUCCESS, "success", (), None, None, created, created + 19_000, None
    )
    assert warm.deliver(done)
    for _ in range(Poller.DEMAND_EVERY):  # to the next count of the completions due
        warm.tick(now, 0.0)
    soon = warm._expected_completions(now, Poller.DEMAND_S)
    assert warm._demand == pytest.approx(Poller.BANK_PER_COMPLETION * soon), "within DEMAND_S"
    assert warm._demand < banked, "a shallower bank than the first wave's"
    kept = warm._tokens
    assert kept > 0.99 * banked, "what it holds is spent (a few scouts), not cut to the cap"
    warm.tick(now, 5.0)  # quiet seconds accrue nothing above the cap
    assert warm._tokens <= kept


async def test_tasks_an_earlier_run_left_do_not_end_the_first_wave():
    now = time.monotonic()
    warm = _wave(warm=True)
    for i in range(20):  # left in flight by a killed run, polled at once, already done
        warm.watch(f"old{i}", "2K", submitted_ago_s=90.0, poll_now=True)
    created = int(warm.clock.wall() * 1000) - 90_000
    for i in range(20):
        done = TaskStatus(
            f"old{i}", TaskState.SUCCESS, "success", (), None, None, created, created + 30_000, None
        )
        assert warm.deliver(done)
    warm.tick(now, 60.0)
    expected = warm._expected_completions(now, Poller.FIRST_WAVE_S)
    assert warm._tokens == pytest.approx(Poller.FIRST_WAVE_BANK_PER_COMPLETION * expected)


async def test_budget_the_bank_would_forfeit_is_spent_exploring():
    poller = _young_tasks(adaptive=True)
    now = time.monotonic()
    cap = 1000 * 0.9
    for tick in range(1, Poller.EXPLORE_EVERY + 1):
        poller.tick(now, 10.0 if tick == 1 else 0.1)  # the bank fills up at once
    sent = poller._due.qsize()
    assert 0 < sent <= cap * (1 - Poller.KEEP) + 1, "what lay beyond the keep, no more"
    assert poller._tokens >= cap * Poller.KEEP - 1, "the keep stays for the wave"
    fixed = _young_tasks(adaptive=False)
    for tick in range(1, Poller.EXPLORE_EVERY + 1):
        fixed.tick(now, 10.0 if tick == 1 else 0.1)
    assert fixed._due.qsize() == 0, "a fixed schedule follows the recipe alone"


async def test_polls_never_exceed_the_room_the_request_window_has():
    poller = _young_tasks(adaptive=True, room=7)
    now = time.monotonic()
    for w in poller._watches.values():
        w.next_at = now  # every task due
    poller.tick(now, 10.0)
    assert poller._due.qsize() == 7


async def test_past_every_completion_seen_the_scouts_look_at_the_interval_the_rest_less_often():
    poller = _poller(rate=100.0)
    _learn(poller, "2K", 13.0, 20.0)  # the fast half of a kind, all that is known so far
    scout = _watch(poller, "2K", 25.5, last_poll_age=22.0)
    other = _watch(poller, "2K", 25.5, last_poll_age=22.0)
    scout.scout, other.scout = True, False
    now = time.monotonic()
    assert poller.schedule.gain(scout, now) >= 1.0, "a scout: due at the recipe's interval"
    assert poller.schedule.gain(other, now) == 0.0, "the others: not yet"
    assert other.next_at == pytest.approx(other.last_poll + 3.0 * Schedule.PAST_FACTOR)
    never = _watch(poller, "2K", 25.5)
    never.scout = False
    assert poller.schedule.gain(never, time.monotonic()) >= 1.0, "never polled: may be done"


async def test_a_task_with_no_chance_yet_is_left_alone_until_its_kinds_next_completion():
    poller = _poller(rate=100.0)
    _learn(poller, "2K", 26.0, 38.0)
    first = poller.schedule.model.quantile("2K", 1e-6)
    assert first is not None and 26.0 <= first < 27.0
    young, near = _watch(poller, "2K", 10.0), _watch(poller, "2K", first - 0.4)
    now = time.monotonic()
    assert poller.schedule.gain(young, now) == 0.0
    assert young.quiet_until == pytest.approx(now + Schedule.QUIET_S), "looked at again soon"
    assert poller.schedule.gain(near, now) == 0.0
    assert near.quiet_until == pytest.approx(near.submitted + first), "its first chance"
    later = near.submitted + 30.0  # a third of such tasks are done by then
    assert poller.schedule.gain(near, later) > 0.0, "then it is worth a poll again"


async def test_one_long_completion_seen_does_not_leave_slower_tasks_waiting_for_its_age():
    poller = _poller(rate=100.0)
    _learn(poller, "2K", 13.0, 19.0, n=59)
    poller.schedule.model.observe("2K", 77.0)  # one straggler, long ago
    w = _watch(poller, "2K", 25.0, last_poll_age=20.0)
    w.scout = True
    assert poller.schedule.gain(w, time.monotonic()) >= 1.0, "the recipe's interval, not 77 s"
    young = _watch(poller, "2K", 10.0)
    assert poller.schedule.gain(young, time.monotonic()) == 0.0, "before its kind: waits"


async def test_a_small_kind_past_its_longest_completion_follows_the_recipes_interval():
    """Fewer completions than an estimate needs (a kind with a few tasks in the run): a
    task older than all of them is due at the recipe's interval, not at a non-scout's
    doubled wait."""
    poller = _poller(rate=100.0)
    for _ in range(3):
        poller.schedule.model.observe("4K", 3.0)
    assert poller.schedule.model.cdf("4K", 5.0) is None, "too few to estimate from"
    now = time.monotonic()
    w = _watch(poller, "4K", 5.0)
    w.scout, w.next_at = False, w.submitted + 40.0
    assert poller.schedule.gain(w, now) >= 1.0, "older than every completion seen: due"
    young = _watch(poller, "4K", 2.0)
    young.scout, young.next_at = False, young.submitted + 40.0
    assert poller.schedule.gain(young, now) == 0.0, "younger: still waits"
