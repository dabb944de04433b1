"""Callback mode against the simulator's webhooks: duplicated, dropped and late deliveries,
forged posts, and the polling safety net."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from runs import (
    assert_images_match_server,
    out_dir,
    prompts,
    run_cli,
    run_engine,
    start_cli,
    wait_until,
)

from runner.api.answers import TaskState, TaskStatus
from runner.api.callback import MAX_BODY, SECRET_NAME, CallbackReceiver, load_secret
from runner.errors import ManifestError
from runner.state.ledger import read_index


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


# -- the start-up probe ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_probe_through_the_right_url_passes_and_is_not_taken_for_a_webhook(receiver):
    rx, accepted = receiver
    await rx.prove_public_url()
    assert accepted == []
    assert (rx.accepted, rx.duplicates, rx.rejected, rx.deliveries) == (0, 0, 0, 0)


async def test_a_probe_nonce_the_receiver_did_not_issue_is_refused(receiver):
    rx, accepted = receiver
    async with (
        aiohttp.ClientSession() as http,
        http.post(rx.callback_url, json={"runner_probe": "made-up"}) as resp,
    ):
        assert resp.status == 404
    assert accepted == [] and rx.rejected == 1


async def test_probe_to_a_closed_port_fails_with_what_to_check(tmp_path):
    port = _free_port()
    secret = load_secret(tmp_path)
    rx = CallbackReceiver(
        "127.0.0.1:0",
        f"http://127.0.0.1:{port}/apixo",
        secret,
        known=lambda _: True,
        accept=lambda _: True,
    )
    async with rx:
        with pytest.raises(ManifestError) as caught:
            await rx.prove_public_url(timeout_s=5)
    text = str(caught.value)
    assert caught.value.where == "api.callback.public_url"
    assert f"http://127.0.0.1:{port}/apixo/<secret> no answer" in text
    assert "(here /apixo/)" in text and "nothing was submitted" in text
    assert secret not in text


@pytest.fixture
async def catch_all():
    """A server that answers 200 to anything, as a wrong public_url might reach."""

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="welcome")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_probe_answered_200_by_another_server_fails(tmp_path, catch_all):
    """A 200 is not enough: the receiver that issued the nonce must have seen it."""
    rx = CallbackReceiver(
        "127.0.0.1:0", catch_all, load_secret(tmp_path), known=lambda _: True,
        accept=lambda _: True,
    )  # fmt: skip
    async with rx:
        with pytest.raises(ManifestError, match=r"got HTTP 200 .*'welcome'.* never saw it"):
            await rx.prove_public_url()


async def test_cli_with_an_unreachable_public_url_exits_2_and_submits_nothing(sim, manifest):
    port = _free_port()
    api = _callback_settings()
    api["callback"] = {"listen": "127.0.0.1:0", "public_url": f"http://127.0.0.1:{port}/hooks"}
    path = manifest(prompts(3), api=api)
    code, err = await run_cli(path, sim.base_url, "--no-progress")
    assert code == 2, err
    assert f"start-up probe posted to http://127.0.0.1:{port}/hooks/<secret> no answer" in err
    assert "nothing was submitted" in err and "Traceback" not in err
    assert (out_dir(path) / SECRET_NAME).read_text().strip() not in err
    assert sim.stats.count(endpoint="generate") == 0


# -- silence while tasks are overdue -----------------------------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_silence_warns_once_when_tasks_are_overdue_and_rearms_on_a_webhook(receiver, caplog):
    rx, _ = receiver
    caplog.set_level(logging.INFO, logger="runner")
    start = time.monotonic()
    assert not rx.check_silence(40, silence_s=60, now=start + 59), "not silent long enough"
    assert not rx.check_silence(0, silence_s=60, now=start + 120), "nothing overdue"
    assert _warnings(caplog) == []
    assert rx.check_silence(40, silence_s=60, now=start + 61)
    assert not rx.check_silence(41, silence_s=60, now=start + 200), "one line per spell"
    (line,) = _warnings(caplog)
    assert line.startswith("no webhook has arrived for 61 s while 40 tasks are overdue;")
    assert "polling them instead; check api.callback.public_url" in line
    assert rx.shown_url in line and rx.callback_url.rsplit("/", 1)[1] not in caplog.text
    async with aiohttp.ClientSession() as http, http.post(rx.callback_url, json=_envelope()):
        pass
    assert rx.deliveries == 1 and "webhooks arrive again" in caplog.text
    later = time.monotonic()
    assert not rx.check_silence(1, silence_s=60, now=later + 1)
    assert rx.check_silence(1, silence_s=60, now=later + 61)
    assert "while 1 task is overdue; polling it instead" in _warnings(caplog)[-1]


async def test_watch_silence_asks_for_the_overdue_count_and_warns(receiver, caplog):
    rx, _ = receiver
    asked: list[int] = []

    def overdue() -> int:
        asked.append(1)
        return 3

    watcher = asyncio.ensure_future(rx.watch_silence(overdue, silence_s=0, every_s=0.01))
    await wait_until(lambda: len(asked) >= 3)
    watcher.cancel()
    assert len(_warnings(caplog)) == 1
    assert "3 tasks are overdue" in _warnings(caplog)[0]
