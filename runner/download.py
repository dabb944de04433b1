"""Downloads: result URL -> verified image file, never a partial one.

A download streams into ``<output>/.tmp/<name>.part``, checks what arrived (the length the
server announced, image magic bytes, a size cap), hashes it, fsyncs it and only then
renames it into place under ``images/``. An interrupted download keeps its ``.part``
and continues with a ``Range`` request where the server allows it (206), or starts over.
Downloads have their own concurrency limit and never hold a task slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiofiles

from .client import ApiClient
from .errors import PermanentApiError, TransientApiError
from .ledger import JobRecord, Ledger
from .manifest import Campaign, Job, image_path
from .outputs import RunCounters

log = logging.getLogger("runner")

__all__ = ["MAX_IMAGE_BYTES", "Downloader", "FileRecord", "fetch_image", "sniff_ext"]

MAX_IMAGE_BYTES = 256 << 20  # a 4K PNG is tens of MB; refuse anything absurd
_CHUNK = 1 << 16
_WRITE_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class FileRecord:
    path: Path
    bytes: int
    sha256: str
    ext: str


def sniff_ext(head: bytes) -> str | None:
    """The image type from its first bytes: png, jpg or webp; None if it is not one."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def image_is_whole(path: Path, ext: str) -> bool:
    """The file's structure is intact: for PNG every chunk's CRC matches and the file ends
    with IEND and nothing after; for JPEG it ends with the EOI marker; for WebP the RIFF
    size matches the file. Catches wrong bytes that kept a valid signature."""
    with path.open("rb") as f:
        if ext == "jpg":
            f.seek(0, os.SEEK_END)
            if f.tell() < 4:
                return False
            f.seek(-2, os.SEEK_END)
            return f.read(2) == b"\xff\xd9"
        if ext == "webp":
            head = f.read(8)
            f.seek(0, os.SEEK_END)
            return len(head) == 8 and int.from_bytes(head[4:8], "little") + 8 == f.tell()
        f.seek(8)  # past the signature
        while True:
            header = f.read(8)
            if len(header) != 8:
                return False  # ended without IEND
            length = int.from_bytes(header[:4], "big")
            if length > MAX_IMAGE_BYTES:
                return False
            crc = zlib.crc32(header[4:])
            left = length
            while left:
                block = f.read(min(left, _CHUNK))
                if not block:
                    return False
                crc = zlib.crc32(block, crc)
                left -= len(block)
            if f.read(4) != crc.to_bytes(4, "big"):
                return False
            if header[4:] == b"IEND":
                return f.read(1) == b""


async def _download_once(
    client: ApiClient, url: str, part: Path, max_bytes: int
) -> tuple[int, hashlib._Hash]:
    """One attempt: continue ``part`` from where it ends; return (size, sha256 so far)."""
    have = part.stat().st_size if part.exists() else 0
    digest = hashlib.sha256()
    async with client.open_file(url, offset=have) as stream:
        if stream.status == 206 and stream.offset == have and have:
            # Resume: the hash must cover the bytes already on disk.
            async with aiofiles.open(part, "rb") as existing:
                while chunk := await existing.read(_CHUNK):
                    digest.update(chunk)
            mode: Literal["ab", "wb"] = "ab"
        else:
            have, mode = 0, "wb"
        if stream.total is not None and stream.total > max_bytes:
            raise PermanentApiError(
                f"result is {stream.total} bytes, over the {max_bytes} cap", 200, "TOO_LARGE"
            )
        size = have
        async with aiofiles.open(part, mode) as out:
            # Each aiofiles write is a hop to a worker thread: gather the network's
            # 64 KiB chunks into 1 MiB writes, so a typical image costs one or two hops.
            pending: list[bytes] = []
            buffered = 0
            async for chunk in stream.chunks(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise PermanentApiError(
                        f"result exceeds the {max_bytes}-byte cap", 200, "TOO_LARGE"
                    )
                digest.update(chunk)
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= _WRITE_BLOCK:
                    await out.write(b"".join(pending))
                    pending, buffered = [], 0
            if pending:
                await out.write(b"".join(pending))
            await out.flush()
            await asyncio.to_thread(os.fsync, out.fileno())
        if stream.total is not None and size != stream.total:
            raise TransientApiError(f"download ended at {size} of {stream.total} bytes")
    return size, digest


async def fetch_image(
    client: ApiClient,
    url: str,
    part: Path,
    dest_for: Callable[[str], Path],
    *,
    attempts: int = 5,
    max_bytes: int = MAX_IMAGE_BYTES,
    backoff_s: float = 0.5,
) -> FileRecord:
    """Download ``url`` into ``part``, verify it, and rename it to ``dest_for(ext)``.

    Transient failures (broken connection, short body, 5xx) are retried, resuming where
    the server allows; a wrong or unusable body fails the download permanently."""
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            size, digest = await _download_once(client, url, part, max_bytes)
            ext = await asyncio.to_thread(_check_image, part)
            break
        except TransientApiError as exc:
            if exc.code in ("RANGE", "NOT_AN_IMAGE", "CORRUPT"):
                part.unlink(missing_ok=True)  # start over, never from bad bytes
            if attempt == attempts:
                if exc.code in ("NOT_AN_IMAGE", "CORRUPT"):
                    raise PermanentApiError(str(exc), 200, exc.code) from None
                raise
            await asyncio.sleep(exc.retry_after or backoff_s * 2 ** (attempt - 1))
        except PermanentApiError:
            part.unlink(missing_ok=True)
            raise
    dest = dest_for(ext)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, dest)
    return FileRecord(dest, size, digest.hexdigest(), ext)


def _check_image(part: Path) -> str:
    """The extension of the image in ``part``. A body that is not an image (an HTML error
    page) or a damaged one is transient: a proxy or the transfer may be at fault, so the
    download is tried again from the start."""
    with part.open("rb") as f:
        ext = sniff_ext(f.read(16))
    if ext is None:
        raise TransientApiError("result is not a PNG, JPEG or WebP image", 200, "NOT_AN_IMAGE")
    if not image_is_whole(part, ext):
        raise TransientApiError(f"result is a damaged {ext.upper()} image", 200, "CORRUPT")
    return ext


class Downloader:
    """Downloads the images of jobs whose task succeeded, recording each verified file
    and the job's end in the ledger. Its own concurrency limit (``limits.downloads``)."""

    def __init__(
        self,
        client: ApiClient,
        ledger: Ledger,
        campaign: Campaign,
        counters: RunCounters,
        *,
        fail: Callable[[Job, str, str, bool], None],
        backoff_s: float,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.campaign = campaign
        self.counters = counters
        self.out = campaign.output.dir
        self._fail = fail
        self._backoff_s = backoff_s
        self._limit = asyncio.Semaphore(campaign.limits.downloads)

    def files_present(self, rec: JobRecord) -> bool:
        """Every image the ledger recorded for the job is still on disk."""
        return bool(rec.files) and all(
            (self.out / str(f["path"])).is_file() for f in rec.files.values()
        )

    async def job(self, job: Job) -> None:
        """Fetch the job's images not yet on disk; then record it done. A transient
        failure parks the job for the next run; a permanent one fails it (retryable)."""
        rec = self.ledger.index[job.id]
        self.counters.downloading += 1
        try:
            for index, url in enumerate(rec.urls):
                if index in rec.files and (self.out / str(rec.files[index]["path"])).is_file():
                    continue
                async with self._limit:
                    record = await self._fetch(job.id, rec.task_id or "", index, url)
                self.ledger.append(
                    "file",
                    job.id,
                    i=index,
                    path=record.path.relative_to(self.out).as_posix(),
                    bytes=record.bytes,
                    sha256=record.sha256,
                )
                self.counters.images += 1
        except TransientApiError as exc:
            log.warning("job %s: download failed for now: %s", job.id, exc)
            self.counters.download_parked += 1
            return
        except PermanentApiError as exc:
            self._fail(job, exc.code or "DOWNLOAD_FAILED", str(exc), True)
            return
        finally:
            self.counters.downloading -= 1
        self.ledger.append("done", job.id, task=rec.task_id)
        self.counters.done += 1

    async def _fetch(self, job_id: str, task_id: str, index: int, url: str) -> FileRecord:
        # The temporary name is derived from the id (not the id itself), so no id can
        # steer it anywhere; the final name is checked to stay inside the folder.
        part_name = hashlib.sha1(job_id.encode()).hexdigest()[:20] + f"-{index}.part"

        def dest_for(ext: str) -> Path:
            return image_path(self.campaign.output, job_id, index, ext, task_id)

        return await fetch_image(
            self.client,
            url,
            self.out / ".tmp" / part_name,
            dest_for,
            attempts=self.campaign.retry.attempts,
            backoff_s=self._backoff_s,
        )
