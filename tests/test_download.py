"""Downloads: the image check made while the bytes stream past agrees with reading the
whole file; an interrupted download resumes from its ``.part`` with the hash and the check
covering the whole image; a write cut short by a cancellation never leaks the file's
descriptor."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simfixtures import body, submit, wait_terminal

from runner.api.client import ApiClient
from runner.api.limits import RequestGate
from runner.errors import ApiError, Outcome
from runner.run import download
from runner.run.download import MAX_IMAGE_BYTES, ImageCheck, fetch_image, sniff_ext
from runner.sim import SimServer, render_png

# -- the check, against a reading of the whole file ---------------------------------------


def whole_file_verdict(data: bytes) -> tuple[str | None, bool]:
    """What the runner judged before checking while streaming: the type from the first
    16 bytes, then the file read back from the start (the oracle)."""
    ext = sniff_ext(data[:16])
    if ext is None:
        return None, False
    f = io.BytesIO(data)
    if ext == "jpg":
        return ext, len(data) >= 4 and data[-2:] == b"\xff\xd9"
    if ext == "webp":
        head = data[:8]
        return ext, len(head) == 8 and int.from_bytes(head[4:8], "little") + 8 == len(data)
    f.seek(8)
    while True:
        header = f.read(8)
        if len(header) != 8:
            return ext, False
        length = int.from_bytes(header[:4], "big")
        if length > MAX_IMAGE_BYTES:
            return ext, False
        chunk = f.read(length)
        if len(chunk) != length:
            return ext, False
        if f.read(4) != zlib.crc32(header[4:] + chunk).to_bytes(4, "big"):
            return ext, False
        if header[4:] == b"IEND":
            return ext, f.read(1) == b""


def png(parts: list[bytes]) -> bytes:
    """A PNG with one chunk per part (IDAT-like), then IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + b"".join(chunk(b"IDAT", p) for p in parts)
        + chunk(b"IEND", b"")
    )


def webp(payload: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(payload)) + b"WEBP" + payload


_BODIES = st.one_of(
    st.lists(st.binary(max_size=300), max_size=6).map(png),
    st.builds(lambda b: b"\xff\xd8\xff" + b + b"\xff\xd9", st.binary(max_size=400)),
    st.binary(max_size=400).map(webp),
    st.binary(max_size=100),
    st.just(b"<!DOCTYPE html><html><body>503</body></html>\n"),
)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = draw(_BODIES)
    how = draw(st.sampled_from(["whole", "cut", "flip", "append", "insert"]))
    if how == "cut" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    elif how == "append":
        data += draw(st.binary(min_size=1, max_size=20))
    elif how == "insert" and data:
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(min_size=1, max_size=20)) + data[i:]
    return data


@settings(max_examples=600, deadline=None)
@given(data=damaged(), cuts=st.lists(st.integers(0, 2000), max_size=12))
def test_the_streamed_check_agrees_with_reading_the_whole_file(
    data: bytes, cuts: list[int]
) -> None:
    check = ImageCheck()
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for start, end in itertools.pairwise(edges):
        check.feed(data[start:end])
    assert check.size == len(data)
    assert check.verdict() == whole_file_verdict(data)


def test_the_simulators_images_pass_and_one_wrong_byte_fails() -> None:
    data = render_png("task_1", 0, 300_000)
    check = ImageCheck()
    for i in range(0, len(data), 65536):
        check.feed(data[i : i + 65536])
    assert check.verdict() == ("png", True)
    spoiled = bytearray(data)
    spoiled[len(data) // 2] ^= 1
    check = ImageCheck()
    check.feed(bytes(spoiled))
    assert check.verdict() == ("png", False)


def test_a_png_of_many_small_chunks_passes_and_one_wrong_byte_in_any_fails() -> None:
    """libpng writes IDAT in 8 KiB chunks: checked whole where a piece holds them."""
    data = png([bytes([i % 251]) * 8192 for i in range(64)])
    for piece in (65536, 20000, 8204):
        check = ImageCheck()
        for i in range(0, len(data), piece):
            check.feed(data[i : i + piece])
        assert check.verdict() == ("png", True), piece
    for at in (40, len(data) // 3, len(data) - 20):
        spoiled = bytearray(data)
        spoiled[at] ^= 0x10
        check = ImageCheck()
        for i in range(0, len(data), 65536):
            check.feed(bytes(spoiled[i : i + 65536]))
        assert check.verdict() == ("png", False), at


def test_a_png_chunk_longer_than_the_cap_is_damaged() -> None:
    head = png([])[:33]  # signature and IHDR
    check = ImageCheck()
    check.feed(head + struct.pack(">I", MAX_IMAGE_BYTES + 1) + b"IDAT")
    assert check.verdict() == ("png", False)


# -- downloads against the simulator --------------------------------------------------------


async def _result_url(sim: SimServer) -> str:
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as http:
        task_id = await submit(http, sim, body(max_images=1))
        data = await wait_terminal(http, sim, task_id)
    url = json.loads(data["resultJson"])["resultUrls"][0]
    assert isinstance(url, str)
    return url


def _client(sim: SimServer) -> ApiClient:
    return ApiClient(sim.base_url, "k", "seedream-4-5", RequestGate(1000, 1.0))


async def test_a_broken_download_resumes_from_its_part_and_hashes_the_whole_image(
    sim: SimServer, tmp_path: Path
) -> None:
    sim.config.image_bytes = 3_000_000  # three write blocks
    url = await _result_url(sim)
    part = tmp_path / ".tmp" / "x.part"  # folders that do not exist yet
    dest = tmp_path / "images" / "a" / "x.png"
    sim.config.p_truncate = 1.0  # half the body, then the connection closes
    async with _client(sim) as client:
        with pytest.raises(ApiError) as broke:
            await fetch_image(client, url, part, lambda ext: dest, attempts=1)
        assert broke.value.outcome is Outcome.RETRY
        kept = part.stat().st_size
        assert 0 < kept < 3_000_000, "the bytes that came are kept for a resume"
        sim.config.p_truncate = 0.0
        record = await fetch_image(client, url, part, lambda ext: dest, attempts=1)
    assert sim.stats.count("file", 206) == 1, "the second attempt asked for the rest only"
    data = dest.read_bytes()
    assert data == await _served(url)
    assert record.sha256 == hashlib.sha256(data).hexdigest(), "the hash covers both halves"
    assert (record.bytes, record.ext, record.path) == (len(data), "png", dest)
    assert not part.exists()


async def _served(url: str) -> bytes:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_a_cancelled_write_closes_the_file_once_its_thread_is_done(tmp_path: Path) -> None:
    # The .part is a FIFO: the thread's write blocks until the test reads it, so the
    # download is cancelled while its write is certainly running.
    path = tmp_path / "x.part"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    before = _open_fds()
    out = download._PartFile(path, resume=False)
    task = asyncio.create_task(out.write([b"x" * (1 << 20)], last=False))
    got = b""
    while not got:  # the thread has opened the file and is writing
        await asyncio.sleep(0.001)
        got += _read_some(reader)
    task.cancel()
    out.abandon()  # what the download does on its way out
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _open_fds() == before + 1, "the thread still writes: closing is left to it"
    while len(got) < 1 << 20:  # let the write end
        await asyncio.sleep(0.001)
        got += _read_some(reader)
    for _ in range(1000):
        if _open_fds() == before:
            break
        await asyncio.sleep(0.001)
    os.close(reader)
    assert _open_fds() == before - 1, "the thread closed the file when its write ended"
    assert got == b"x" * (1 << 20), "the write it had started was not cut"


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_a_write_cancelled_while_it_waits_for_a_thread_still_closes_the_file(
    tmp_path: Path,
) -> None:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(pool)
    before = _open_fds()
    out = download._PartFile(tmp_path / "x.part", resume=False)
    await out.write([b"first"], last=False)  # the file is open now
    assert _open_fds() == before + 1
    gate = threading.Event()
    busy = loop.run_in_executor(None, gate.wait)  # the only thread is taken
    task = asyncio.create_task(out.write([b" second"], last=False))
    await asyncio.sleep(0.01)  # the write waits in the pool's queue
    task.cancel()
    out.abandon()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _open_fds() == before + 1, "the queued write still owns the file"
    gate.set()
    await busy
    for _ in range(1000):
        if _open_fds() == before:
            break
        await asyncio.sleep(0.001)
    assert _open_fds() == before, "when its turn came, it closed the file"
    assert (tmp_path / "x.part").read_bytes() == b"first", "and wrote nothing more"
    pool.shutdown()
