"""Callback mode against the simulator's webhooks: duplicated, dropped and late deliveries,
forged posts, and the polling safety net."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest
from runs import (
    assert_images_match_server,
    out_dir,
    prompts,
    run_cli,
    run_engine,
    start_cli,
    wait_until,
)

from runner.callback import MAX_BODY, SECRET_NAME, CallbackReceiver, load_secret
from runner.client import TaskState, TaskStatus
from runner.ledger import read_index


def _callback_settings(**extra: object) -> dict[str, object]:
    return {"mode": "callback", "callback": {"listen": "127.0.0.1:0"}, **extra}


def _ledger_events(out: Path) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in (out / "ledger.jsonl").read_bytes().splitlines()]


async def test_callback_run_completes_with_few_status_requests(sim, manifest):
    sim.config.p_cb_duplicate = 0.1
    path = manifest(prompts(40), api=_callback_settings(), limits={"concurrency": 10})
    code, engine = await run_engine(path, sim.base_url)
    assert code == 0
    out = out_dir(path)
    assert assert_images_match_server(out, sim) == 40
    delivered = [e for e in _ledger_events(out) if e["e"] == "delivered"]
    assert len(delivered) == 40 - engine.counters.polled_results
    assert sim.stats.count(endpoint="status") < 40 * 0.25
    assert set(sim.stats.submissions_per_prompt.values()) == {1}


async def test_duplicate_deliveries_are_acknowledged_and_ignored(sim, manifest):
    sim.config.p_cb_duplicate = 1.0  # every webhook comes twice
    path = manifest(prompts(8), api=_callback_settings(), limits={"concurrency": 8})
    code, _ = await run_engine(path, sim.base_url)
    assert code == 0
    events = _ledger_events(out_dir(path))
    per_task: dict[object, int] = {}
    for e in events:
        if e["e"] == "delivered":
            per_task[e["task"]] = per_task.get(e["task"], 0) + 1
    assert per_task and set(per_task.values()) == {1}, "one delivered record per task"
    assert sim.stats.images_served == 8, "each image downloaded once"


async def test_dropped_deliveries_are_caught_by_polling_overdue_tasks(sim, manifest):
    sim.config.p_cb_drop = 1.0  # no webhook ever arrives
    path = manifest(prompts(6), api=_callback_settings(), limits={"concurrency": 6})
    code, _ = await run_engine(path, sim.base_url)
    assert code == 0
    assert assert_images_match_server(out_dir(path), sim) == 6
    assert not [e for e in _ledger_events(out_dir(path)) if e["e"] == "delivered"]


async def test_secret_is_kept_per_output_folder(tmp_path):
    first = load_secret(tmp_path)
    assert len(first) >= 40 and load_secret(tmp_path) == first
    assert (tmp_path / SECRET_NAME).stat().st_mode & 0o077 == 0, "owner-only file"
    assert load_secret(tmp_path / "other") != first


@pytest.fixture
async def receiver(tmp_path):
    """A receiver waiting on one task, recording what it accepts."""
    accepted: list[TaskStatus] = []

    def accept(status: TaskStatus) -> bool:
        new = all(s.task_id != status.task_id for s in accepted)
        accepted.append(status)
        return new

    rx = CallbackReceiver(
        "127.0.0.1:0",
        None,
        load_secret(tmp_path),
        known=lambda task_id: task_id == "task_known",
        accept=accept,
    )
    async with rx:
        yield rx, accepted


def _envelope(task_id: str = "task_known", state: str = "success") -> dict[str, object]:
    data: dict[str, object] = {
        "taskId": task_id,
        "state": state,
        "createTime": 1,
        "completeTime": 2,
    }
    if state == "success":
        data["resultJson"] = orjson.dumps({"resultUrls": ["http://127.0.0.1:9/x.png"]}).decode()
    return {"code": 200, "message": "success", "data": data}


async def test_receiver_accepts_a_valid_delivery_on_the_secret_path(receiver):
    rx, accepted = receiver
    async with aiohttp.ClientSession() as http:
        async with http.post(rx.callback_url, json=_envelope()) as resp:
            assert resp.status == 200
        async with http.post(rx.callback_url, json=_envelope()) as resp:
            assert resp.status == 200  # duplicate: acknowledged
    assert [s.state for s in accepted] == [TaskState.SUCCESS] * 2
    assert (rx.accepted, rx.duplicates) == (1, 1)


@pytest.mark.parametrize(
    "forgery",
    ["wrong_path", "no_path", "get", "unknown_task", "not_json", "no_task_id", "oversized",
     "bad_result_json", "array_body"],
)  # fmt: skip
async def test_forged_posts_are_rejected_without_side_effects(receiver, forgery):
    rx, accepted = receiver
    base = rx.callback_url.rsplit("/", 1)[0]
    url, method, body = rx.callback_url, "POST", orjson.dumps(_envelope())
    if forgery == "wrong_path":
        url = base + "/" + "A" * 43
    elif forgery == "no_path":
        url = base + "/"
    elif forgery == "get":
        method = "GET"
    elif forgery == "unknown_task":
        body = orjson.dumps(_envelope("task_someone_else"))
    elif forgery == "not_json":
        body = b"{not json"
    elif forgery == "no_task_id":
        body = orjson.dumps({"code": 200, "data": {"state": "success"}})
    elif forgery == "oversized":
        body = b'{"pad": "' + b"x" * (MAX_BODY + 10) + b'"}'
    elif forgery == "bad_result_json":
        env = _envelope()
        env["data"]["resultJson"] = "not json"  # type: ignore[index]
        body = orjson.dumps(env)
    elif forgery == "array_body":
        body = b"[1, 2, 3]"
    async with aiohttp.ClientSession() as http, http.request(method, url, data=body) as resp:
        assert resp.status >= 400
    assert accepted == []
    assert rx.rejected == 1


async def test_forged_posts_during_a_run_change_nothing(sim, manifest):
    """Forgeries aimed at a live run's receiver (wrong secret, right secret with a
    stranger's task id) cause no download and no ledger record."""
    sim.config.gen_2k_s = (200.0, 200.0)  # 2 s tasks: time to forge
    path = manifest(prompts(3), api=_callback_settings(), limits={"concurrency": 3})
    run = asyncio.ensure_future(run_engine(path, sim.base_url))
    out = out_dir(path)
    await wait_until(lambda: len(sim.tasks) == 3)
    secret = (out / SECRET_NAME).read_text().strip()
    # the receiver's port is in the callback URL the simulator was given
    callback_url = next(iter(sim.tasks.values())).submission.callback_url
    assert callback_url is not None and callback_url.endswith(secret)
    base = callback_url.rsplit("/", 1)[0]
    forged = _envelope("task_forged")
    async with aiohttp.ClientSession() as http:
        for url, body in [
            (base + "/wrong-secret", _envelope(next(iter(sim.tasks)))),
            (callback_url, forged),
        ]:
            async with http.post(url, json=body) as resp:
                assert resp.status == 404
    code, _ = await run
    assert code == 0
    events = _ledger_events(out)
    assert not [e for e in events if e.get("task") == "task_forged"]
    assert sim.stats.images_served == 3
    assert "127.0.0.1:9" not in (out / "ledger.jsonl").read_text()


async def test_killed_callback_run_resumes_and_polls_tasks_left_in_flight(sim, manifest):
    sim.config.gen_2k_s = (100.0, 150.0)
    path = manifest(prompts(10), api=_callback_settings(), limits={"concurrency": 10})
    proc = await start_cli(path, sim.base_url)
    await wait_until(lambda: sim.stats.tasks_created >= 10, proc)
    proc.kill()
    await proc.wait()
    secret = (out_dir(path) / SECRET_NAME).read_text()
    index, _ = read_index(out_dir(path))
    assert index, "tasks were recorded before the kill"
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert (out_dir(path) / SECRET_NAME).read_text() == secret, "same secret after restart"
    assert assert_images_match_server(out_dir(path), sim) == 10
    extra = sum(sim.stats.submissions_per_prompt.values()) - 10
    summary = orjson.loads((out_dir(path) / "summary.json").read_bytes())
    assert extra <= summary["uncertain_submissions"]["all_runs"]
