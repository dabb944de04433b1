"""The outcome policy (runner/outcome.py): its table, its backoff, and what each outcome
does to a job end to end against the simulator: uncertain submissions recorded before
anything is resent, 429s waited out for a slot, unreadable status answers never failing a
paid task, dead result URLs refreshed from the task, vanished tasks lost (not failed)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from runs import TEST_KEY, image_files, out_dir, prompts, run_engine

from runner.api.outcome import (
    SLOT_BACKOFF_MAX_S,
    Backoff,
    FailClass,
    Fault,
    Outcome,
    Request,
    classify,
    classify_fail_code,
    exhausted,
)
from runner.errors import (
    FatalApiError,
    LostError,
    PermanentApiError,
    SlotBusyError,
    TransientApiError,
    UncertainSubmitError,
    api_error,
)
from runner.manifest.campaign import load_campaign
from runner.manifest.settings import Retry
from runner.sim import SimServer
from runner.state.ledger import read_index
from runner.state.record import Phase

SUBMIT, STATUS, FILE, WEBHOOK = Request.SUBMIT, Request.STATUS, Request.FILE, Request.WEBHOOK
RETRY, WAIT, UNCERTAIN = Outcome.RETRY, Outcome.WAIT_SLOT, Outcome.UNCERTAIN
PERMANENT, LOST, FATAL = Outcome.PERMANENT, Outcome.LOST, Outcome.FATAL

# -- the table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "submit", "poll", "file"),
    [
        (429, WAIT, RETRY, RETRY),
        (500, UNCERTAIN, RETRY, RETRY),
        (502, UNCERTAIN, RETRY, RETRY),
        (503, UNCERTAIN, RETRY, RETRY),
        (504, UNCERTAIN, RETRY, RETRY),
        (408, RETRY, RETRY, RETRY),
        (400, PERMANENT, PERMANENT, PERMANENT),
        (401, FATAL, FATAL, PERMANENT),
        (403, FATAL, FATAL, LOST),
        (404, PERMANENT, LOST, LOST),
        (410, PERMANENT, PERMANENT, LOST),
        (416, PERMANENT, PERMANENT, RETRY),
    ],
)
def test_each_http_status_has_one_outcome_per_kind_of_request(status, submit, poll, file):
    assert classify(SUBMIT, Fault.STATUS, status) is submit
    assert classify(STATUS, Fault.STATUS, status) is poll
    assert classify(FILE, Fault.STATUS, status) is file


@pytest.mark.parametrize(
    ("fault", "submit", "poll", "file", "webhook"),
    [
        (Fault.NOT_SENT, RETRY, RETRY, RETRY, RETRY),
        (Fault.CONNECTION_LOST, UNCERTAIN, RETRY, RETRY, RETRY),
        (Fault.UNREADABLE, UNCERTAIN, RETRY, RETRY, PERMANENT),
        (Fault.SHORT_BODY, RETRY, RETRY, RETRY, RETRY),
        (Fault.BAD_BODY, RETRY, RETRY, RETRY, RETRY),
        (Fault.TOO_LARGE, PERMANENT, PERMANENT, PERMANENT, PERMANENT),
    ],
)
def test_each_fault_has_one_outcome_per_kind_of_request(fault, submit, poll, file, webhook):
    got = [classify(r, fault) for r in (SUBMIT, STATUS, FILE, WEBHOOK)]
    assert got == [submit, poll, file, webhook]


def test_insufficient_credits_is_fatal_whatever_the_status():
    assert classify(SUBMIT, Fault.STATUS, 400, "INSUFFICIENT_CREDITS") is FATAL
    assert classify_fail_code("INSUFFICIENT_CREDITS") is FailClass.FATAL
    assert classify_fail_code("CONTENT_VIOLATION").outcome is PERMANENT
    assert classify_fail_code("SensitiveContentDetected").outcome is RETRY


def test_spent_retries_leave_work_for_later_except_dead_hosts_and_bad_bodies():
    assert exhausted(SUBMIT, Fault.NOT_SENT) is RETRY  # the job stays pending
    assert exhausted(STATUS, Fault.UNREADABLE) is RETRY  # the task stays live
    assert exhausted(FILE, Fault.CONNECTION_LOST) is RETRY  # the download is parked
    assert exhausted(FILE, Fault.NOT_SENT) is LOST  # the URL's host is gone
    assert exhausted(FILE, Fault.BAD_BODY) is PERMANENT


def test_each_outcome_is_raised_as_its_class_of_the_error_tree():
    classes = {
        RETRY: TransientApiError,
        WAIT: SlotBusyError,
        UNCERTAIN: UncertainSubmitError,
        PERMANENT: PermanentApiError,
        LOST: LostError,
        FATAL: FatalApiError,
    }
    for outcome, cls in classes.items():
        exc = api_error(outcome, "m", 500, "C", 1.5, fault=Fault.STATUS)
        assert type(exc) is cls and exc.outcome is outcome and exc.fault is Fault.STATUS


def test_backoff_is_bounded_by_attempts_and_time_and_jittered():
    b = Backoff(attempts=3, initial_s=1.0, max_s=4.0, window_s=10.0)
    assert b.allows(2, 9.9) and not b.allows(3, 0.0) and not b.allows(1, 10.0)
    delays = [b.delay(attempt) for attempt in (1, 2, 3, 4, 5) for _ in range(50)]
    assert all(0.5 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 10, "jittered"
    assert b.delay(1, retry_after=7.0) == 7.0, "Retry-After is honoured"


def test_slot_waits_grow_from_retry_after_never_below_it_and_cap_at_half_a_minute():
    b = Backoff(initial_s=0.5)
    assert all(b.slot_delay(1, 2.0) == 2.0 for _ in range(20))
    assert all(2.0 <= b.slot_delay(3, 2.0) <= 8.0 for _ in range(20))
    late = [b.slot_delay(20, 2.0) for _ in range(50)]
    assert all(SLOT_BACKOFF_MAX_S / 2 <= d <= SLOT_BACKOFF_MAX_S for d in late)
    assert b.slot_delay(20, 45.0) == 45.0, "a longer Retry-After is still honoured"


def test_the_example_manifest_spells_out_the_retry_defaults():
    """manifests/campaign.yaml documents every retry setting at its default."""
    campaign = load_campaign(Path(__file__).parent.parent / "manifests" / "campaign.yaml", {})
    assert campaign.retry == Retry()
    assert (Retry().uncertain, Retry().slot_wait_s) == (3, 1800.0)


# -- helpers ---------------------------------------------------------------------------------


def _events(path: Path, job: str | None = None) -> list[dict[str, Any]]:
    lines = (out_dir(path) / "ledger.jsonl").read_bytes().splitlines()
    events = [orjson.loads(line) for line in lines]
    return [e for e in events if job is None or e["job"] == job]


def _job(path: Path, n: int = 0) -> Any:
    return list(load_campaign(path, {}).jobs())[n]


#: a submission older than the API keeps tasks (15 days): a 404 for it means gone
_OLD = time.time() - 16 * 86400


def _append(path: Path, *events: dict[str, Any]) -> None:
    ledger = out_dir(path) / "ledger.jsonl"
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with ledger.open("ab") as f:
        for ev in events:
            f.write(orjson.dumps({"t": time.time(), **ev}) + b"\n")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def _foreign_tasks(sim: SimServer, n: int) -> None:
    """Create ``n`` tasks under the runner's key, as another program sharing it would."""
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for i in range(n):
            body = {"input": {"prompt": f"another program's picture {i}", "max_images": 1}}
            async with http.post(f"{sim.base_url}/generateTask/seedream-4-5", json=body) as r:
                assert r.status == 200, await r.text()


# -- submissions -----------------------------------------------------------------------------

UNCERTAIN_FAULTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "5xx": ({"p_5xx": 1.0}, {}),
    "timeout": ({"p_slow": 1.0, "slow_s": 0.3}, {"request_timeout": 0.1}),
    "unreadable_200": ({"p_hostile": 1.0, "hostile": "task_id"}, {}),
}


@pytest.mark.parametrize("fault", list(UNCERTAIN_FAULTS))
async def test_uncertain_submission_is_recorded_before_resending_then_left_pending(
    sim, manifest, fault
):
    """A 5xx, a timeout or an unreadable 200 answering a submission: ``uncertain`` is in
    the ledger before the job is sent again, up to retry.uncertain submissions of unknown
    outcome in a run; then the job stays pending (exit 4: the API is in trouble, not the
    job), and the next run sends it again once the API is well."""
    knobs, retry = UNCERTAIN_FAULTS[fault]
    path = manifest(prompts(1), retry={"uncertain": 2, **retry})
    sim.config.update(knobs)
    code, engine = await run_engine(path, sim.base_url)
    assert code == 4
    kinds = [e["e"] for e in _events(path)]
    assert kinds == ["submit", "uncertain"] * 2, "two of unknown outcome, then no more"
    assert engine.counters.uncertain == 2 == sum(sim.stats.faults.values())
    assert engine.counters.uncertain_gave_up == 1 and engine.counters.failed == 0
    sim.config.update({"p_5xx": 0.0, "p_slow": 0.0, "p_hostile": 0.0})
    code, _ = await run_engine(path, sim.base_url)
    assert code == 0 and len(image_files(out_dir(path))) == 1


async def test_unreachable_api_leaves_the_job_pending_not_failed(manifest):
    """A connection that never connected certainly sent nothing: after retry.attempts
    the job stays pending (``unsent``) for a later run; no SUBMIT_FAILED."""
    path = manifest(prompts(1), retry={"attempts": 2})
    code, engine = await run_engine(path, f"http://127.0.0.1:{_closed_port()}/api/v1")
    assert code == 4
    assert [e["e"] for e in _events(path)] == ["submit", "unsent"]
    assert engine.counters.failed == 0 and engine.counters.uncertain == 0
    index, _ = read_index(out_dir(path))
    assert [r.phase for r in index.values()] == [Phase.NEW]


async def test_429s_while_foreign_tasks_hold_the_limit_are_waited_out(sim, manifest):
    """The key's live-task limit is full of another program's tasks: every 429 to a
    submission is ``unsent`` and waited out (not counted against retry.attempts, here 1),
    and every job is done once the foreign tasks end."""
    sim.config.concurrency = 2
    sim.config.gen_2k_s = (100.0, 100.0)  # 1 s at the test's time scale
    await _foreign_tasks(sim, 2)
    sim.config.gen_2k_s = (25.0, 35.0)
    path = manifest(prompts(3), limits={"concurrency": 2}, retry={"attempts": 1})
    code, engine = await run_engine(path, sim.base_url)
    assert code == 0, "no job failed SUBMIT_FAILED"
    refused = sim.stats.count("generate", 429)
    assert refused >= 2
    events = _events(path)
    assert sum(e["e"] == "unsent" for e in events) == refused
    assert not any(e["e"] == "failed" for e in events)
    assert engine.counters.uncertain == 0 and engine.counters.slot_waits_expired == 0
    assert set(sim.stats.submissions_per_prompt.values()) == {1}


async def test_slot_wait_expired_leaves_the_job_pending_for_a_later_run(sim, manifest):
    """Foreign tasks that never end hold the limit: after retry.slot_wait the job is not
    failed but left pending (``unsent``, counted in slot_waits_expired); a later run with
    a free slot submits it."""
    sim.config.concurrency = 1
    sim.config.p_stuck = 1.0
    await _foreign_tasks(sim, 1)
    sim.config.p_stuck = 0.0
    path = manifest(prompts(1), retry={"slot_wait": 0.3})
    code, engine = await run_engine(path, sim.base_url)
    assert code == 4
    assert engine.counters.slot_waits_expired == 1 and engine.counters.failed == 0
    events = _events(path)
    assert events[-1]["e"] == "unsent" and not any(e["e"] == "failed" for e in events)
    index, _ = read_index(out_dir(path))
    assert [r.phase for r in index.values()] == [Phase.NEW]
    sim.config.concurrency = 2
    code, _ = await run_engine(path, sim.base_url)
    assert code == 0 and len(image_files(out_dir(path))) == 1


async def test_a_stop_ends_a_slot_wait_at_once_leaving_the_job_pending(sim, manifest):
    """--deadline while a submission waits for a slot (retry.slot_wait: 30 minutes): the
    run stops without waiting it out; the job is pending, nothing uncertain."""
    sim.config.concurrency = 1
    sim.config.p_stuck = 1.0
    await _foreign_tasks(sim, 1)
    sim.config.p_stuck = 0.0
    path = manifest(prompts(1))
    code, engine = await asyncio.wait_for(run_engine(path, sim.base_url, deadline_s=0.5), 20)
    assert code == 4
    assert sim.stats.count("generate", 429) >= 1
    assert engine.counters.uncertain == 0 and engine.counters.slot_waits_expired == 0
    assert _events(path)[-1]["e"] == "unsent"


# -- polls -----------------------------------------------------------------------------------


async def test_unreadable_status_answers_never_fail_a_paid_task(sim, manifest):
    """Every status answer of a finished task is malformed: the task is asked about again
    and again, stays live past polling.timeout (not failed), and the next run collects it
    without paying twice."""
    sim.config.update({"p_hostile": 1.0, "hostile": "not_json"})
    polling = {"initial_delay": 0.2, "interval": 0.05, "jitter": 0.2, "timeout": 1.0}
    path = manifest(prompts(1), polling=polling, retry={"attempts": 2})
    code, engine = await run_engine(path, sim.base_url)
    assert code == 4 and engine.counters.failed == 0 and engine.counters.timed_out == 1
    assert sim.stats.faults["hostile"] >= 3
    index, _ = read_index(out_dir(path))
    assert [r.phase for r in index.values()] == [Phase.LIVE]
    sim.config.p_hostile = 0.0
    # polling.timeout counts from the submission: give the resumed task time.
    path = manifest(prompts(1), polling={**polling, "timeout": 60}, retry={"attempts": 2})
    code, _ = await run_engine(path, sim.base_url)
    assert code == 0 and sim.stats.tasks_created == 1


async def test_task_the_api_no_longer_has_is_lost_not_failed_and_paid_again_only_on_request(
    sim, manifest
):
    """A live task in the ledger that the API answers 404 for: the job is ``lost``
    (TASK_GONE), the other job is done, nothing is resubmitted; only --retry-failed pays
    for it again."""
    path = manifest(prompts(2))
    job = _job(path)
    _append(
        path,
        # submitted longer ago than the API keeps tasks (15 days)
        {"e": "submit", "job": job.id, "fp": job.fingerprint, "imgs": 1, "t": _OLD},
        {"e": "task", "job": job.id, "task": "task_forgotten_by_the_api"},
    )
    await run_engine(path, sim.base_url)
    index, _ = read_index(out_dir(path))
    rec = index.get(job.id)
    assert rec is not None and rec.phase is Phase.LOST and rec.fail_code == "TASK_GONE"
    assert _events(path, job.id)[-1]["e"] == "lost"
    assert sim.stats.tasks_created == 1, "only the other job was submitted"
    await run_engine(path, sim.base_url)
    assert sim.stats.tasks_created == 1, "a lost job is not paid again by itself"
    code, _ = await run_engine(path, sim.base_url, retry_failed=True)
    assert code == 0 and sim.stats.tasks_created == 2


# -- downloads -------------------------------------------------------------------------------


@pytest.mark.parametrize("dead", ["bad_signature", "unreachable_host"])
async def test_dead_result_url_is_refreshed_from_the_task_and_recorded(sim, manifest, dead):
    """The ledger's result URL answers 404 (or its host cannot be reached): the task is
    polled again, the fresh URLs are recorded (a new ``result``) and the image fetched,
    with nothing resubmitted."""
    path = manifest(prompts(1), retry={"attempts": 2})
    assert (await run_engine(path, sim.base_url))[0] == 0
    job = _job(path)
    task_id = next(iter(sim.tasks))
    good = sim.result_urls(sim.tasks[task_id])
    bad = good[0].replace("sig=", "sig=0")
    if dead == "unreachable_host":
        bad = f"http://127.0.0.1:{_closed_port()}/files/{task_id}/0.png"
    _append(path, {"e": "result", "job": job.id, "task": task_id, "urls": [bad]})
    for f in image_files(out_dir(path)):
        f.unlink()
    code, _ = await run_engine(path, sim.base_url)
    assert code == 0 and len(image_files(out_dir(path))) == 1
    results = [e for e in _events(path, job.id) if e["e"] == "result"]
    # fresh URLs (each status answer signs its own), to the same file of the same task
    assert [u.split("?")[0] for u in results[-1]["urls"]] == [u.split("?")[0] for u in good]
    assert results[-1]["urls"] != [bad] and results[-1]["task"] == task_id
    assert sim.stats.tasks_created == 1


async def test_dead_url_of_a_task_the_api_no_longer_has_is_lost_and_the_run_goes_on(sim, manifest):
    path = manifest(prompts(2))
    job = _job(path)
    url = f"{sim.base_url.split('/api')[0]}/files/task_gone/0.png?exp=1&sig=x"
    _append(
        path,
        {"e": "submit", "job": job.id, "fp": job.fingerprint, "imgs": 1, "t": _OLD},
        {"e": "task", "job": job.id, "task": "task_gone"},
        {"e": "result", "job": job.id, "task": "task_gone", "urls": [url]},
    )
    _, engine = await run_engine(path, sim.base_url)
    assert engine.counters.lost == 1 and engine.counters.done == 1
    lost = _events(path, job.id)[-1]
    assert lost["e"] == "lost" and lost["code"] == "TASK_GONE"
    assert sim.stats.tasks_created == 1


async def test_a_body_damaged_every_time_fails_the_job_after_the_retries(sim, manifest):
    """Corrupt bodies are fetched again from the start, retry.attempts times; then the
    job fails CORRUPT (retryable), not lost."""
    sim.config.p_corrupt = 1.0
    path = manifest(prompts(1), retry={"attempts": 2})
    code, _ = await run_engine(path, sim.base_url)
    assert code == 1
    failed = _events(path)[-1]
    assert failed["e"] == "failed" and failed["code"] == "CORRUPT" and failed["retryable"]
    assert sim.stats.count("file") == 2
