"""Tasks move pending -> processing -> success/failed on the (scaled) clock, report Unix-ms
times, draw their generation time and image count as documented, and fail on request."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import aiohttp
import pytest
from simfixtures import body, fast_config, get_status, post, submit, url_paths, wait_terminal

from runner.sim import SimConfig, SimServer
from runner.sim.tasks import FAIL_MESSAGES, RETRYABLE_FAIL_CODES


def result_urls(data: dict[str, Any]) -> list[str]:
    assert isinstance(data["resultJson"], str)  # a JSON string, parsed a second time
    parsed = json.loads(data["resultJson"])
    assert set(parsed) == {"resultUrls"}
    urls: list[str] = parsed["resultUrls"]
    return urls


async def test_task_waits_in_pending_without_terminal_fields(http: aiohttp.ClientSession) -> None:
    async with SimServer(fast_config(pending_s=(1e6, 1e6))) as sim:
        task_id = await submit(http, sim, body())
        status, envelope = await get_status(http, sim, task_id)
    assert status == 200
    assert envelope["data"]["state"] == "pending"
    assert set(envelope["data"]) == {"taskId", "state", "createTime"}


async def test_task_processes_after_pending_without_terminal_fields(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(fast_config(pending_s=(0, 0), gen_2k_s=(1e6, 1e6))) as sim:
        task_id = await submit(http, sim, body())
        _, envelope = await get_status(http, sim, task_id)
    assert envelope["data"]["state"] == "processing"
    assert set(envelope["data"]) == {"taskId", "state", "createTime"}


async def test_states_are_seen_in_order_and_end_in_success(http: aiohttp.ClientSession) -> None:
    # Long enough phases (250 ms each) that a tight poll loop sees every state.
    cfg = fast_config(pending_s=(250, 250), gen_2k_s=(250, 250))
    order = ["pending", "processing", "success"]
    async with SimServer(cfg) as sim:
        task_id = await submit(http, sim, body())
        seen: list[str] = []
        while not seen or seen[-1] != "success":
            _, envelope = await get_status(http, sim, task_id)
            state = envelope["data"]["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
    assert seen == order


async def test_success_reports_unix_ms_times_and_result_json(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    before_ms = time.time() * 1000
    task_id = await submit(http, fast_sim, body(max_images=3))
    after_ms = time.time() * 1000
    data = await wait_terminal(http, fast_sim, task_id)
    assert data["state"] == "success"
    assert set(data) == {"taskId", "state", "createTime", "completeTime", "costTime", "resultJson"}
    assert all(isinstance(data[k], int) for k in ("createTime", "completeTime", "costTime"))
    assert before_ms - 1 <= data["createTime"] <= after_ms + 1
    pending_ms = data["completeTime"] - data["createTime"] - data["costTime"]
    assert 1 <= pending_ms <= 3  # pending_s (1, 3) at scale 0.001
    assert 25 <= data["costTime"] <= 35  # 2K: 25-35 s at scale 0.001
    urls = result_urls(data)
    assert len(urls) == 3 and len(set(urls)) == 3
    assert all(u.startswith(fast_sim.origin + "/files/") for u in urls)


async def test_generation_time_is_drawn_per_task_from_the_documented_ranges(
    http: aiohttp.ClientSession,
) -> None:
    # At scale 1 nothing finishes during the test: read the drawn durations from the records.
    async with SimServer(SimConfig(seed=5)) as sim:
        ids_2k = [await submit(http, sim, body()) for _ in range(20)]
        ids_4k = [await submit(http, sim, body(resolution="4K")) for _ in range(20)]
        gen_2k = [sim.tasks[i].cost_ms for i in ids_2k]
        gen_4k = [sim.tasks[i].cost_ms for i in ids_4k]
        pending = [sim.tasks[i].processing_ms - sim.tasks[i].create_ms for i in ids_2k]
        _, envelope = await get_status(http, sim, ids_4k[0])
    assert all(25_000 <= g <= 35_000 for g in gen_2k)
    assert all(40_000 <= g <= 55_000 for g in gen_4k)
    assert all(1_000 <= p <= 3_000 for p in pending)
    assert len(set(gen_2k)) > 1 and len(set(gen_4k)) > 1  # drawn, not fixed
    assert envelope["data"]["state"] in ("pending", "processing")


async def test_time_scale_multiplies_generation_time(http: aiohttp.ClientSession) -> None:
    async with SimServer(SimConfig(time_scale=0.5, seed=5)) as sim:
        ids = [await submit(http, sim, body(resolution="4K")) for _ in range(10)]
        assert all(20_000 <= sim.tasks[i].cost_ms <= 27_500 for i in ids)


async def test_other_models_take_2k_time_unless_asked_for_4k(http: aiohttp.ClientSession) -> None:
    async with SimServer(SimConfig(seed=3)) as sim:
        plain = await submit(http, sim, {"input": {"prompt": "x"}}, model="flux-2")
        big = await submit(http, sim, {"input": {"prompt": "x", "resolution": "4K"}}, "flux-2")
        assert 25_000 <= sim.tasks[plain].cost_ms <= 35_000
        assert 40_000 <= sim.tasks[big].cost_ms <= 55_000


async def test_disabled_sequential_makes_exactly_max_images(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    for n in (1, 4, 10):
        data = await wait_terminal(http, fast_sim, await submit(http, fast_sim, body(max_images=n)))
        assert len(result_urls(data)) == n


async def test_auto_sequential_makes_between_one_and_max_images(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    payload = body(max_images=6, sequential_image_generation="auto")
    ids = [await submit(http, fast_sim, payload) for _ in range(30)]
    counts = [len(result_urls(await wait_terminal(http, fast_sim, i))) for i in ids]
    assert all(1 <= c <= 6 for c in counts)
    assert len(set(counts)) > 1  # the model "decides": counts vary


# Every code of the API page (the simulator's message table) and one of another model.
FAIL_CODES = [*FAIL_MESSAGES, "SensitiveContentDetected"]


@pytest.mark.parametrize("code", FAIL_CODES)
async def test_fail_marker_in_prompt_fails_the_task_with_that_code(
    fast_sim: SimServer, http: aiohttp.ClientSession, code: str
) -> None:
    task_id = await submit(http, fast_sim, body(prompt=f"a cat [fail:{code}] on a mat"))
    data = await wait_terminal(http, fast_sim, task_id)
    assert data["state"] == "failed"
    assert data["failCode"] == code
    assert isinstance(data["failMsg"], str) and data["failMsg"]
    assert set(data) == {
        "taskId",
        "state",
        "createTime",
        "completeTime",
        "costTime",
        "failCode",
        "failMsg",
    }


async def test_fail_marker_works_for_other_models_too(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    payload = {"input": {"prompt": "[fail:GENERATION_FAILED]"}}
    task_id = await submit(http, fast_sim, payload, model="nano-banana")
    data = await wait_terminal(http, fast_sim, task_id, model="nano-banana")
    assert data["failCode"] == "GENERATION_FAILED"


async def test_p_fail_ends_tasks_with_retryable_processing_codes(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(fast_config(p_fail=1.0)) as sim:
        ids = [await submit(http, sim, body()) for _ in range(12)]
        codes = {(await wait_terminal(http, sim, i))["failCode"] for i in ids}
    assert codes <= set(RETRYABLE_FAIL_CODES)
    assert len(codes) > 1


async def test_p_stuck_task_stays_processing_past_its_completion_time(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(fast_config(p_stuck=1.0, pending_s=(0, 0))) as sim:
        task_id = await submit(http, sim, body())
        record = sim.tasks[task_id]
        while time.time() * 1000 < record.complete_ms + 20:
            _, envelope = await get_status(http, sim, task_id)
            assert envelope["data"]["state"] == "processing"
        _, envelope = await get_status(http, sim, task_id)
    assert envelope["data"]["state"] == "processing"


async def test_task_ids_are_unique_and_counted_per_prompt(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    ids = [await submit(http, fast_sim, body(prompt=f"p{i % 3}")) for i in range(9)]
    assert len(set(ids)) == 9
    assert fast_sim.stats.tasks_created == 9
    assert fast_sim.stats.submissions_per_prompt == {"p0": 3, "p1": 3, "p2": 3}


async def test_credits_are_spent_per_generated_image_and_exhaustion_answers_403(
    http: aiohttp.ClientSession,
) -> None:
    async with SimServer(fast_config(credits=5)) as sim:
        await submit(http, sim, body(max_images=3))
        await submit(http, sim, body(max_images=2, prompt="[fail:GENERATION_FAILED]"))
        assert sim.config.credits == 2  # the failed task generated nothing, cost nothing
        status, envelope = await post(http, sim, body(max_images=3))
        assert status == 403 and envelope["code"] == 403
        assert "balance" in envelope["message"]
        await submit(http, sim, body(max_images=2))
        assert sim.config.credits == 0
        assert sim.stats.credits_spent == 5


async def test_seeded_simulators_draw_the_same_tasks(http: aiohttp.ClientSession) -> None:
    draws = []
    for _ in range(2):
        async with SimServer(SimConfig(seed=99)) as sim:
            task_id = await submit(
                http, sim, body(max_images=5, sequential_image_generation="auto")
            )
            t = sim.tasks[task_id]
            draws.append((task_id, t.cost_ms, t.n_images, t.sha256))
    assert draws[0] == draws[1]


async def test_a_client_written_from_the_api_page_gets_its_images(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """Submit, poll, parse resultJson, download: the bytes are the recorded images."""
    task_id = await submit(http, fast_sim, body(max_images=2))
    data = await wait_terminal(http, fast_sim, task_id)
    digests = []
    for url in result_urls(data):
        async with http.get(url) as resp:
            assert resp.status == 200
            digests.append(hashlib.sha256(await resp.read()).hexdigest())
    assert digests == fast_sim.tasks[task_id].sha256


async def test_task_record_exposes_state_input_times_urls_and_hashes(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    payload = body(max_images=2, aspect_ratio="3:4")
    task_id = await submit(http, fast_sim, payload)
    record = fast_sim.tasks[task_id]
    assert record.input == payload["input"]
    assert record.create_ms <= record.processing_ms <= record.complete_ms
    data = await wait_terminal(http, fast_sim, task_id)
    assert record.state == "success"
    assert url_paths(record.result_urls) == url_paths(result_urls(data))
    assert len(record.sha256) == 2
    failed = fast_sim.tasks[await submit(http, fast_sim, body(prompt="[fail:INVALID_PROMPT]"))]
    assert failed.result_urls == [] and failed.sha256 == []
