"""A simulator with a memory: with a state folder, tasks, balance and billing outlive the
server process (even a SIGKILL right after an answer), and ``read_billing`` reads what the
folder billed without a server. Also the ``images_billed`` counter itself."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from simfixtures import (
    AUTH,
    MODEL,
    body,
    fast_config,
    get_status,
    post,
    submit,
    until,
    url_paths,
    wait_terminal,
)

from runner.sim import SimServer, StateFolderBusy, read_billing
from runner.sim.store import STATE_FILE


def result_urls(data: dict[str, object]) -> list[str]:
    assert isinstance(data["resultJson"], str)
    urls: list[str] = json.loads(data["resultJson"])["resultUrls"]
    return urls


async def test_images_billed_counts_the_images_of_tasks_in_success_only(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    ok = await submit(http, fast_sim, body(max_images=3))
    failed = await submit(http, fast_sim, body(max_images=2, prompt="[fail:GENERATION_FAILED]"))
    fast_sim.config.p_stuck = 1.0
    stuck = await submit(http, fast_sim, body(max_images=4))
    fast_sim.config.p_stuck, fast_sim.config.gen_2k_s = 0.0, (1e6, 1e6)
    await submit(http, fast_sim, body(max_images=5))  # still processing: not billed yet
    assert fast_sim.stats.images_billed == 0  # nothing has succeeded yet
    await wait_terminal(http, fast_sim, ok)
    await wait_terminal(http, fast_sim, failed)
    await until(lambda: fast_sim.tasks[stuck].complete_ms < time.time() * 1000)
    assert fast_sim.stats.images_billed == 3
    async with http.get(f"{fast_sim.origin}/_sim/stats") as r:
        assert (await r.json())["images_billed"] == 3


async def test_restarted_server_finds_the_tasks_of_the_previous_one(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    state = tmp_path / "state"
    # 2K generation 200 simulated s = 0.2 s: the second task finishes while no server is up.
    async with SimServer(fast_config(credits=20), state_dir=state) as first:
        done = await submit(http, first, body(max_images=2, prompt="done"))
        done_data = await wait_terminal(http, first, done)
        first.config.gen_2k_s = (200, 200)
        later = await submit(http, first, body(max_images=3, aspect_ratio="16:9", prompt="later"))
        await submit(http, first, body(max_images=4, prompt="[fail:NSFW_DETECTED]"))
        later_record = first.tasks[later]
        old_origin = first.origin
    await until(lambda: time.time() * 1000 > later_record.complete_ms)  # with no server up
    async with SimServer(fast_config(credits=20), state_dir=state) as second:
        # A new server process: its own counters, the folder's billing.
        assert second.stats.tasks_created == 3
        assert second.stats.submissions_per_prompt == {
            "done": 1,
            "later": 1,
            "[fail:NSFW_DETECTED]": 1,
        }
        assert second.stats.credits_spent == 5 and second.config.credits == 15
        assert second.stats.images_billed == 5  # "later" succeeded while nothing ran
        status, envelope = await get_status(http, second, done)
        assert status == 200
        assert envelope["data"]["createTime"] == done_data["createTime"]
        assert envelope["data"]["completeTime"] == done_data["completeTime"]
        data = await wait_terminal(http, second, later)
        assert data["completeTime"] == later_record.complete_ms
        urls = result_urls(data)
        assert len(urls) == 3
        assert all(u.startswith(second.origin + "/files/") for u in urls)  # today's port
        if second.origin != old_origin:
            assert not any(u.startswith(old_origin) for u in urls)
        for url, digest in zip(urls, later_record.sha256, strict=True):
            async with http.get(url) as r:
                assert r.status == 200
                assert hashlib.sha256(await r.read()).hexdigest() == digest
        assert second.tasks[later].sha256 == later_record.sha256
        assert url_paths(second.tasks[later].result_urls) == url_paths(urls)
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer other"}) as other:
            assert (await get_status(other, second, done))[0] == 404  # still the key's own


async def test_billing_and_balance_add_up_over_restarts(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    state = tmp_path / "state"
    for round_ in range(3):
        async with SimServer(fast_config(credits=100), state_dir=state) as sim:
            assert sim.config.credits == 100 - 3 * round_
            task_id = await submit(http, sim, body(max_images=3, prompt="same prompt"))
            await wait_terminal(http, sim, task_id)
            assert sim.stats.tasks_created == round_ + 1
            assert sim.stats.images_billed == 3 * (round_ + 1)
    billing = read_billing(state)
    assert billing["tasks_created"] == 3
    assert billing["images_billed"] == billing["credits_spent"] == 9
    assert billing["submissions_per_prompt"] == {"same prompt": 3}
    assert billing["credits"] == 91


async def test_a_balance_set_through_the_config_endpoint_is_kept(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    state = tmp_path / "state"
    async with (
        SimServer(fast_config(credits=10), state_dir=state) as sim,
        http.post(f"{sim.origin}/_sim/config", json={"credits": 42}) as r,
    ):
        assert r.status == 200
    assert read_billing(state)["credits"] == 42
    async with SimServer(fast_config(credits=10), state_dir=state) as sim:
        assert sim.config.credits == 42


async def test_without_a_recorded_balance_the_configured_one_holds(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    state = tmp_path / "state"
    async with SimServer(fast_config(), state_dir=state) as sim:
        await submit(http, sim, body())
    async with SimServer(fast_config(credits=7), state_dir=state) as sim:
        assert sim.config.credits == 7


def test_read_billing_of_a_missing_folder_is_zero(tmp_path: Path) -> None:
    assert read_billing(tmp_path / "never") == {
        "tasks_created": 0,
        "images_billed": 0,
        "submissions_per_prompt": {},
        "credits_spent": 0,
        "credits": None,
    }
    assert not (tmp_path / "never").exists()


async def test_a_torn_last_line_is_ignored_and_cut_before_the_next_task(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    state = tmp_path / "state"
    async with SimServer(fast_config(), state_dir=state) as sim:
        kept = await submit(http, sim, body(prompt="kept"))
    path = state / STATE_FILE
    with path.open("ab") as f:
        f.write(b'{"kind": "task", "task_id": "task_torn", "key"')  # killed mid-write
    assert read_billing(state)["tasks_created"] == 1
    async with SimServer(fast_config(), state_dir=state) as sim:
        assert set(sim.tasks) == {kept}
        added = await submit(http, sim, body(prompt="added"))
    assert all(json.loads(line) for line in path.read_bytes().splitlines())
    async with SimServer(fast_config(), state_dir=state) as sim:
        assert set(sim.tasks) == {kept, added}


async def test_seeded_servers_on_one_folder_never_reuse_a_task_id(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    ids = []
    for _ in range(2):
        async with SimServer(fast_config(seed=5), state_dir=tmp_path / "state") as sim:
            ids += [await submit(http, sim, body()) for _ in range(3)]
    assert len(set(ids)) == 6


async def test_a_folder_serves_one_simulator_at_a_time(tmp_path: Path) -> None:
    async with SimServer(fast_config(), state_dir=tmp_path / "state"):
        with pytest.raises(StateFolderBusy):
            await SimServer(fast_config(), state_dir=tmp_path / "state").start()
    async with SimServer(fast_config(), state_dir=tmp_path / "state"):
        pass  # released on stop


async def test_nothing_is_written_outside_the_folder_and_never_the_key(tmp_path: Path) -> None:
    key = "sk-VERY-secret-key-0123456789"
    state = tmp_path / "state"
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http,
        SimServer(fast_config(), state_dir=state) as sim,
    ):
        task_id = await submit(http, sim, body(max_images=2))
        await wait_terminal(http, sim, task_id)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [
        Path("state"),
        Path("state") / STATE_FILE,
    ]
    content = (state / STATE_FILE).read_bytes()
    assert task_id.encode() in content
    assert key.encode() not in content and key[3:15].encode() not in content


async def test_loaded_callback_tasks_send_no_webhook_again(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    state = tmp_path / "state"
    async with SimServer(fast_config(gen_2k_s=(100, 100)), state_dir=state) as sim:
        payload = body()
        payload.update(request_type="callback", callback_url="http://127.0.0.1:9/hook")
        task_id = await submit(http, sim, payload)
    # The server stopped before the webhook was due (stop cancels it).
    async with SimServer(fast_config(), state_dir=state) as sim:
        await wait_terminal(http, sim, task_id)
        await asyncio.sleep(0.05)
        assert sim.stats.callbacks_sent == 0


async def test_sigkill_right_after_the_answer_loses_no_task(tmp_path: Path) -> None:
    """A simulator process killed with SIGKILL the moment it answered a submission: the
    folder holds the task, and the next simulator serves its status and images."""
    state = tmp_path / "state"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner.sim",
        "--port=0",
        "--time-scale=0.001",
        f"--state-dir={state}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        base_url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.post(
                f"{base_url}/generateTask/{MODEL}", json=body(prompt="kept", max_images=2)
            ) as r:
                assert r.status == 200
                task_id = (await r.json())["data"]["taskId"]
                proc.send_signal(signal.SIGKILL)  # the moment the answer is in
            assert await asyncio.wait_for(proc.wait(), 20) == -signal.SIGKILL
            billing = read_billing(state)
            assert billing["tasks_created"] == 1
            assert billing["submissions_per_prompt"] == {"kept": 1}
            async with SimServer(fast_config(), state_dir=state) as sim:
                data = await wait_terminal(http, sim, task_id)
                for url in result_urls(data):
                    async with http.get(url) as r:
                        assert r.status == 200
                assert sim.stats.images_billed == read_billing(state)["images_billed"] == 2
                status, _ = await post(http, sim, body())
                assert status == 200
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
