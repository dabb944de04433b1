"""Result URLs serve real, distinct PNG files from the simulator itself, with ranges,
expiry, and the download faults (truncation, corruption)."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from simfixtures import body, fast_config, submit, wait_terminal

from runner.sim import SimServer, render_png


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


async def test_url_expires_after_the_ttl(fast_sim: SimServer, http: aiohttp.ClientSession) -> None:
    _, urls = await finished_urls(http, fast_sim, 1)
    async with http.get(urls[0]) as r:
        assert r.status == 200
    fast_sim.config.url_ttl_s = 0  # expire everything that completed before now
    async with http.get(urls[0]) as r:
        assert r.status == 404
    fast_sim.config.url_ttl_s = 86400
    async with http.get(urls[0]) as r:
        assert r.status == 200


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


async def test_image_bytes_knob_sets_the_file_size(http: aiohttp.ClientSession) -> None:
    async with SimServer(fast_config(image_bytes=50_000)) as sim:
        _, urls = await finished_urls(http, sim, 1)
        async with http.get(urls[0]) as r:
            assert len(await r.read()) == 50_000
