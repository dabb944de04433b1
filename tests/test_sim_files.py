"""Result URLs serve real, distinct PNG files from the simulator itself, with ranges,
expiry, and the download faults (truncation, corruption)."""

from __future__ import annotations

import hashlib
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from simfixtures import (
    body,
    fast_config,
    get_status,
    submit,
    until,
    url_exp_ms,
    url_paths,
    wait_terminal,
)

from runner.sim import SimServer, image_shape, render_png


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw scanlines) of an 8-bit RGB PNG; fails on any structural error."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header, kinds = 8, b"", b"", []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + chunk) == crc, f"bad CRC in {kind!r}"
        kinds.append(kind)
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    assert pos == len(data)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert (depth, colour) == (8, 2)
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + 3 * width)
    return width, height, raw


def test_render_png_is_a_valid_png_of_the_requested_size() -> None:
    for size in (2000, 16384, 100_000):
        data = render_png("task_abc", 0, size)
        assert len(data) == size
        width, height, _ = decode_png(data)
        assert width > 0 and height > 0
    data = render_png("task_abc", 0, 40_000, 105, 45)
    assert len(data) == 40_000 and decode_png(data)[:2] == (105, 45)


ASPECT_RATIOS = ("1:1", "2:3", "3:2", "4:3", "3:4", "9:16", "16:9", "21:9")


def test_image_shape_is_the_exact_ratio_and_twice_as_large_at_4k() -> None:
    assert image_shape("1:1", "2K") == (64, 64)
    assert image_shape(None, "2K") == image_shape("5:4", "2K") == (64, 64)  # square
    for ratio in ASPECT_RATIOS:
        a, b = map(int, ratio.split(":"))
        w, h = image_shape(ratio, "2K")
        assert w * b == h * a, ratio
        assert 3000 <= w * h <= 5000, ratio  # about 64 x 64 pixels of area
        assert image_shape(ratio, "4K") == (2 * w, 2 * h)


def test_render_png_is_deterministic_and_differs_per_image() -> None:
    assert render_png("task_a", 0, 5000) == render_png("task_a", 0, 5000)
    pictures = {decode_png(render_png(t, i, 5000))[2] for t in ("task_a", "task_b") for i in (0, 1)}
    assert len(pictures) == 4  # the visible pixels differ, not only the padding


def test_render_png_smaller_than_the_picture_gives_the_bare_picture() -> None:
    data = render_png("task_a", 0, 10)
    decode_png(data)
    assert len(data) > 10


async def finished_urls(
    http: aiohttp.ClientSession, sim: SimServer, n: int = 2
) -> tuple[str, list[str]]:
    task_id = await submit(http, sim, body(max_images=n))
    data = await wait_terminal(http, sim, task_id)
    return task_id, json.loads(data["resultJson"])["resultUrls"]


@asynccontextmanager
async def faulty_download(
    http: aiohttp.ClientSession, sim: SimServer, fault: str
) -> AsyncIterator[tuple[str, aiohttp.ClientResponse]]:
    """GET the image of a finished task with the download fault ``fault`` switched on.

    Yields the task id and the response, which starts as a normal 200 answer.
    """
    task_id, urls = await finished_urls(http, sim, 1)
    setattr(sim.config, fault, 1.0)
    async with http.get(urls[0]) as r:
        assert r.status == 200
        yield task_id, r


async def test_download_serves_the_recorded_png_with_headers(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    task_id, urls = await finished_urls(http, fast_sim, 3)
    digests = []
    for url in urls:
        assert "?exp=" in url and "&sig=" in url
        async with http.get(url) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "image/png"
            assert r.headers["Accept-Ranges"] == "bytes"
            data = await r.read()
            assert int(r.headers["Content-Length"]) == len(data) == fast_sim.config.image_bytes
        decode_png(data)
        digests.append(hashlib.sha256(data).hexdigest())
    assert digests == fast_sim.tasks[task_id].sha256
    assert len(set(digests)) == 3
    assert fast_sim.stats.images_served == 3
    assert fast_sim.stats.bytes_served == 3 * fast_sim.config.image_bytes
    assert fast_sim.stats.count("file", 200) == 3


async def test_images_of_different_tasks_differ(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    a, _ = await finished_urls(http, fast_sim, 2)
    b, _ = await finished_urls(http, fast_sim, 2)
    assert not set(fast_sim.tasks[a].sha256) & set(fast_sim.tasks[b].sha256)


async def test_download_needs_no_api_key(fast_sim: SimServer, http: aiohttp.ClientSession) -> None:
    _, urls = await finished_urls(http, fast_sim, 1)
    async with aiohttp.ClientSession() as anon, anon.get(urls[0]) as r:
        assert r.status == 200


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [("bytes=1000-", 1000, None), ("bytes=10-19", 10, 20), ("bytes=-100", -100, None)],
)
async def test_range_request_answers_206_with_content_range(
    fast_sim: SimServer, http: aiohttp.ClientSession, range_header: str, start: int, end: int | None
) -> None:
    _, urls = await finished_urls(http, fast_sim, 1)
    async with http.get(urls[0]) as r:
        whole = await r.read()
    async with http.get(urls[0], headers={"Range": range_header}) as r:
        assert r.status == 206
        part = await r.read()
        first = start % len(whole)
        last = (end if end is not None else len(whole)) - 1
        assert r.headers["Content-Range"] == f"bytes {first}-{last}/{len(whole)}"
        assert int(r.headers["Content-Length"]) == len(part)
    assert part == whole[start:end]


async def test_range_past_the_end_answers_416(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    _, urls = await finished_urls(http, fast_sim, 1)
    async with http.get(urls[0], headers={"Range": "bytes=999999-"}) as r:
        assert r.status == 416
        assert r.headers["Content-Range"] == f"bytes */{fast_sim.config.image_bytes}"


async def test_multiple_or_malformed_ranges_serve_the_whole_file(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    _, urls = await finished_urls(http, fast_sim, 1)
    for header in ("bytes=0-1,5-9", "items=0-5", "bytes=abc-"):
        async with http.get(urls[0], headers={"Range": header}) as r:
            assert r.status == 200
            assert len(await r.read()) == fast_sim.config.image_bytes


async def test_head_gives_headers_only_and_is_not_an_image_served(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    _, urls = await finished_urls(http, fast_sim, 1)
    async with http.head(urls[0]) as r:
        assert r.status == 200
        assert int(r.headers["Content-Length"]) == fast_sim.config.image_bytes
        assert await r.read() == b""
    assert fast_sim.stats.images_served == 0


async def test_url_lifetime_counts_from_each_answer_so_polling_again_refreshes_it(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    fast_sim.config.url_ttl_s = 0  # every URL handed out from now on is already expired
    task_id, urls = await finished_urls(http, fast_sim, 1)
    async with http.get(urls[0]) as r:
        assert r.status == 410
    fast_sim.config.url_ttl_s = 86400
    async with http.get(urls[0]) as r:
        assert r.status == 410  # a URL keeps the expiry it was handed out with
    _, envelope = await get_status(http, fast_sim, task_id)
    fresh = json.loads(envelope["data"]["resultJson"])["resultUrls"]
    assert url_paths(fresh) == url_paths(urls) and fresh != urls
    async with http.get(fresh[0]) as r:
        assert r.status == 200
        assert hashlib.sha256(await r.read()).hexdigest() == fast_sim.tasks[task_id].sha256[0]
    assert fast_sim.stats.count("file", 410) == 2


async def test_url_expires_url_ttl_after_it_was_handed_out(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    fast_sim.config.url_ttl_s = 100.0  # 100 ms at time scale 0.001
    task_id = await submit(http, fast_sim, body())
    await until(lambda: fast_sim.tasks[task_id].state == "success")
    before_ms = time.time() * 1000
    _, envelope = await get_status(http, fast_sim, task_id)
    after_ms = time.time() * 1000
    (url,) = json.loads(envelope["data"]["resultJson"])["resultUrls"]
    assert before_ms + 100 - 1 <= url_exp_ms(url) <= after_ms + 100
    await until(lambda: time.time() * 1000 > url_exp_ms(url))
    async with http.get(url) as r:
        assert r.status == 410


async def test_finished_task_is_gone_after_retention_status_404_urls_410(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    task_id, urls = await finished_urls(http, fast_sim, 2)
    async with http.get(urls[1]) as r:
        assert r.status == 200
    fast_sim.config.retention_s = 0  # everything finished before now is gone
    status, envelope = await get_status(http, fast_sim, task_id)
    assert status == 404 and envelope["code"] == 404
    assert envelope["data"]["error"] == "taskId"
    for url in urls:
        async with http.get(url) as r:
            assert r.status == 410
    async with http.get(urls[0][:-4] + "0000") as r:
        assert r.status == 404  # a forged URL stays unknown, gone task or not
    async with http.get(f"{fast_sim.origin}/files/task_unknown/0.png?exp=1&sig=0") as r:
        assert r.status == 404
    assert fast_sim.stats.images_billed == 2  # a task that is gone was still paid for


async def test_unfinished_task_is_never_gone(http: aiohttp.ClientSession) -> None:
    async with SimServer(fast_config(gen_2k_s=(1e6, 1e6), retention_s=0)) as sim:
        task_id = await submit(http, sim, body())
        status, envelope = await get_status(http, sim, task_id)
        assert status == 200 and envelope["data"]["state"] in ("pending", "processing")


async def test_tampered_or_unknown_urls_answer_404(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    task_id, urls = await finished_urls(http, fast_sim, 1)
    url = urls[0]
    bad = [
        url[:-4] + "0000",  # signature changed
        url.replace("?exp=", "?exp=1"),  # expiry changed
        url.replace("/0.png", "/1.png"),  # another index, same signature
        url.split("?")[0],  # no query
        url.replace(task_id, "task_unknown"),
        f"{fast_sim.origin}/files/{task_id}/x.png",
    ]
    for u in bad:
        async with http.get(u) as r:
            assert r.status == 404, u
    assert fast_sim.stats.count("file", 404) == len(bad)


async def test_url_of_an_unfinished_task_answers_404(http: aiohttp.ClientSession) -> None:
    async with SimServer(fast_config(gen_2k_s=(1e6, 1e6))) as sim:
        task_id = await submit(http, sim, body())
        url = sim.tasks[task_id].result_urls[0]  # signed, but the task is processing
        async with http.get(url) as r:
            assert r.status == 404


async def test_p_truncate_closes_the_download_after_about_half(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    async with faulty_download(http, fast_sim, "p_truncate") as (_, r):
        assert int(r.headers["Content-Length"]) == fast_sim.config.image_bytes
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert fast_sim.stats.faults["truncate"] == 1
    assert fast_sim.stats.images_served == 0
    fast_sim.config.p_truncate = 0.0
    async with http.get(r.url) as again:
        assert len(await again.read()) == fast_sim.config.image_bytes


async def test_p_corrupt_serves_wrong_bytes_of_the_right_length(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    async with faulty_download(http, fast_sim, "p_corrupt") as (task_id, r):
        data = await r.read()
    assert len(data) == fast_sim.config.image_bytes
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert hashlib.sha256(data).hexdigest() != fast_sim.tasks[task_id].sha256[0]
    assert fast_sim.stats.faults["corrupt"] == 1


async def test_api_faults_do_not_touch_downloads(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    _, urls = await finished_urls(http, fast_sim, 1)
    fast_sim.config.p_reset = fast_sim.config.p_5xx = fast_sim.config.p_429 = 1.0
    async with http.get(urls[0]) as r:
        assert r.status == 200
        assert len(await r.read()) == fast_sim.config.image_bytes


@pytest.mark.parametrize("ratio", [*ASPECT_RATIOS, None])
async def test_downloads_have_the_requested_shape_and_4k_is_four_times_the_bytes(
    fast_sim: SimServer, http: aiohttp.ClientSession, ratio: str | None
) -> None:
    shapes = {}
    for resolution in ("2K", "4K"):
        fields = {"resolution": resolution, "max_images": 2}
        if ratio is not None:
            fields["aspect_ratio"] = ratio
        task_id = await submit(http, fast_sim, body(**fields))
        data = await wait_terminal(http, fast_sim, task_id)
        for i, url in enumerate(json.loads(data["resultJson"])["resultUrls"]):
            async with http.get(url) as r:
                png = await r.read()
            assert hashlib.sha256(png).hexdigest() == fast_sim.tasks[task_id].sha256[i]
            factor = 4 if resolution == "4K" else 1
            assert len(png) == factor * fast_sim.config.image_bytes
            shapes[resolution] = decode_png(png)[:2]
    a, b = map(int, (ratio or "1:1").split(":"))
    (w, h), big = shapes["2K"], shapes["4K"]
    assert w * b == h * a and big == (2 * w, 2 * h)


async def test_image_bytes_knob_sets_the_file_size(http: aiohttp.ClientSession) -> None:
    async with SimServer(fast_config(image_bytes=50_000)) as sim:
        _, urls = await finished_urls(http, sim, 1)
        async with http.get(urls[0]) as r:
            assert len(await r.read()) == 50_000
