"""Downloads: result URL -> verified image file, never a partial one.

A download streams into ``<output>/.tmp/<name>.part``, checks what arrived as it passes
(the length the server announced, a size cap, the image's structure: magic bytes, PNG
chunk CRCs, JPEG and WebP ends), hashes it, fsyncs it (and drops its pages from the
page cache) and only then renames it into place
under ``images/``. The file side runs in worker threads, one hop per MiB written (the
last also fsyncs and closes), so the event loop never waits for the disk. An
interrupted download keeps its ``.part`` and continues with a ``Range`` request where the
server allows it (206), or starts over. Downloads have their own concurrency limit and
never hold a task slot.

What a failed download means is the outcome policy's word (:mod:`runner.api.outcome`):

* RETRY (a broken transfer, a short, damaged or foreign body, a 5xx): tried again, from
  where it stopped or from the start, within ``retry.attempts``; then the job is parked
  for the next run (a body damaged every time fails the job);
* LOST (the URL answers 403/404/410, or its host cannot be reached): the URLs are dead.
  The task is polled again for fresh ones (recorded in the ledger as a new ``result``),
  at most :data:`MAX_REFRESHES` times per job and run; if the API no longer has the task
  (TASK_GONE), or its URLs are the same or dead again (URL_EXPIRED), the job is ``lost``
  (a ledger event, not a failure): the run goes on;
* PERMANENT (a body over the size cap): the job fails (retryable).

Owns: files on disk and the ``file``, ``done`` and ``lost`` events. Must not know: how
a file is named (:mod:`runner.manifest.naming`), what an answer means (the policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.api.answers import TaskState
from runner.api.client import ApiClient
from runner.api.outcome import Backoff, Fault, Outcome, Request, classify, exhausted
from runner.clock import SYSTEM_CLOCK, Clock
from runner.errors import ApiError, FatalApiError, LostError, api_error
from runner.manifest.campaign import Campaign
from runner.manifest.jobspec import Job
from runner.manifest.naming import image_path
from runner.present.dataset import append_job
from runner.present.outputs import RunCounters
from runner.state.events import Done, File, Lost, Result
from runner.state.ledger import Ledger
from runner.state.record import JobRecord

log = logging.getLogger("runner")

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_REFRESHES",
    "Downloader",
    "FileRecord",
    "ImageCheck",
    "fetch_image",
    "sniff_ext",
]

MAX_IMAGE_BYTES = 256 << 20  # a 4K PNG is tens of MB; refuse anything absurd
#: times a job's dead result URLs are refreshed by polling its task, per run
MAX_REFRESHES = 2
_WRITE_BLOCK = 1 << 20
_IOV_MAX = 512  # buffers per writev (the kernel allows 1,024)


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


class ImageCheck:
    """Whether a body is a whole image, judged from its bytes as they stream past (so the
    file is never read back): its type from the first 16 bytes (:func:`sniff_ext`), then
    for PNG every chunk's CRC matches and the body ends with IEND and nothing after; for
    JPEG it ends with the EOI marker; for WebP the RIFF size matches the body's. Catches
    wrong bytes that kept a valid signature. Feed it every byte of the body in order
    (:meth:`feed`), then ask :meth:`verdict`."""

    __slots__ = ("_bad", "_crc", "_head", "_kind", "_left", "_need", "_small", "_state",
                 "_tail", "_type", "size")  # fmt: skip

    def __init__(self) -> None:
        self.size = 0
        self._head = bytearray()  # the first 16 bytes, until the type is decided
        self._kind: str | None = None  # "" once decided and not an image
        self._tail = b""  # JPEG: the last two bytes so far
        # PNG: the field being read (_SIG, _HEADER, _DATA, _CRC, _END), the bytes of a
        # small field gathered so far and how many it needs, the chunk's type, the data
        # bytes left in it, and its CRC so far
        self._state = _SIG
        self._small = bytearray()
        self._need = 8
        self._type = b""
        self._left = 0
        self._crc = 0
        self._bad = False

    def feed(self, data: bytes | memoryview) -> None:
        """The next bytes of the body."""
        view = memoryview(data)
        self.size += len(view)
        if self._kind is None:
            take = 16 - len(self._head)
            self._head += view[:take]
            if len(self._head) < 16:
                return
            self._decide()
            view = view[take:]
        self._take(view)

    def verdict(self) -> tuple[str | None, bool]:
        """(the image's extension, None if the body is not a PNG, JPEG or WebP image;
        whether it is whole)."""
        if self._kind is None:
            self._decide()
        ext = self._kind or None
        if ext == "jpg":
            return ext, self.size >= 4 and self._tail == b"\xff\xd9"
        if ext == "webp":
            return ext, int.from_bytes(self._head[4:8], "little") + 8 == self.size
        if ext == "png":
            return ext, self._state == _END and not self._bad
        return None, False

    def _decide(self) -> None:
        self._kind = sniff_ext(bytes(self._head)) or ""
        self._take(memoryview(self._head))

    def _take(self, view: memoryview) -> None:
        if not view:
            return
        if self._kind == "jpg":
            self._tail = (self._tail + bytes(view[-2:]))[-2:]
        elif self._kind == "png":
            self._png(view)

    def _png(self, view: memoryview) -> None:
        while view and not self._bad:
            if self._state == _HEADER and not self._small:
                view = self._whole_chunks(view)
                if not view or self._bad:
                    return
            if self._state == _DATA:
                n = min(self._left, len(view))
                self._crc = zlib.crc32(view[:n], self._crc)
                self._left -= n
                view = view[n:]
                if not self._left:
                    self._state, self._need = _CRC, 4
                continue
            if self._state == _END:
                self._bad = True  # bytes after IEND
                return
            n = self._need - len(self._small)
            self._small += view[:n]
            view = view[n:]
            if len(self._small) < self._need:
                return
            field = bytes(self._small)
            self._small.clear()
            if self._state == _SIG:  # sniff_ext checked it
                self._state, self._need = _HEADER, 8
            elif self._state == _HEADER:
                self._left = int.from_bytes(field[:4], "big")
                if self._left > MAX_IMAGE_BYTES:
                    self._bad = True
                self._type = field[4:]
                self._crc = zlib.crc32(self._type)
                self._state, self._need = (_DATA, 0) if self._left else (_CRC, 4)
            else:  # _CRC
                if field != self._crc.to_bytes(4, "big"):
                    self._bad = True
                self._state, self._need = (_END, 0) if self._type == b"IEND" else (_HEADER, 8)

    def _whole_chunks(self, view: memoryview) -> memoryview:
        """Check the chunks that lie whole in ``view`` (which starts at a chunk's start)
        one CRC call each, and return the rest: a PNG's IDAT chunks are often 8 KiB (the
        libpng default), and the field-by-field reader costs ten times more per chunk."""
        size, pos = len(view), 0
        while pos + 12 <= size:
            length = int.from_bytes(view[pos : pos + 4], "big")
            end = pos + 12 + length
            if end > size or length > MAX_IMAGE_BYTES:
                break  # the field-by-field reader takes it (and judges its length)
            if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
                self._bad = True
                return view[end:]
            if view[pos + 4 : pos + 8].tobytes() == b"IEND":
                self._state, self._type = _END, b"IEND"
                self._bad = end < size  # bytes after IEND
                return view[end:]
            pos = end
        return view[pos:]


_SIG, _HEADER, _DATA, _CRC, _END = range(5)


class _PartFile:
    """The ``.part`` file of one download attempt, written by worker threads: each
    :meth:`write` is one hop to a thread that hashes the bytes, checks them
    (:class:`ImageCheck`) and writes them; the first also opens the file (and, resuming,
    reads back what it holds), the last fsyncs and closes it. A 1 MB image thus costs one
    hop, not one per network chunk and per file operation.

    The descriptor is only used by one thread at a time: a write handed to the thread pool
    is not taken back if the download is cancelled meanwhile (it may still be waiting for
    a free thread), and :meth:`abandon` leaves the closing to it when it has not ended; a
    write that starts once its download is abandoned only closes the file."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.resume = resume
        self.digest = hashlib.sha256()
        self.check = ImageCheck()
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._busy = False
        self._abandoned = False

    async def write(self, chunks: list[bytes], last: bool) -> None:
        self._busy = True  # no write of this file is running: no thread to race
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(None, self._write, chunks, last)
        done.add_done_callback(_retrieved)  # its error is ours, or nobody's once abandoned
        await asyncio.shield(done)  # a cancellation must not unqueue it: it owns the file

    def abandon(self) -> None:
        """Close the file now, or when the write still running in a thread ends."""
        with self._lock:
            self._abandoned = True
            if not self._busy:
                self._close()

    def _write(self, chunks: list[bytes], last: bool) -> None:  # in a worker thread
        try:
            if self._abandoned:
                return  # nobody waits for these bytes any more (closed below)
            if self._fd is None:
                self._open()
            assert self._fd is not None
            for chunk in chunks:
                self.digest.update(chunk)
                self.check.feed(chunk)
            _write_all(self._fd, chunks)
            if last:
                os.fsync(self._fd)
                _forget_pages(self._fd)
                self._close()
        finally:
            with self._lock:
                self._busy = False
                if self._abandoned:
                    self._close()

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.resume else os.O_TRUNC)
        try:
            self._fd = os.open(self.path, flags, 0o644)
        except FileNotFoundError:  # the first download into this folder
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, flags, 0o644)
        if self.resume:
            # The hash and the check must cover the bytes already on disk.
            with self.path.open("rb") as f:
                while block := f.read(_WRITE_BLOCK):
                    self.digest.update(block)
                    self.check.feed(block)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _forget_pages(fd: int) -> None:
    """Drop a written and fsynced file's pages from the page cache. A run writes
    gigabytes it rarely reads back; and copying the next image into the pages just freed
    costs less than into fresh ones: 0.5 ms of CPU a 1 MB image instead of 0.8-1.3 (the
    latter most of all in a virtual machine, whose host backs each new page on first
    touch), for 0.04 ms of this call. The file on disk is untouched."""
    if _DONTNEED is not None:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, _DONTNEED)


_DONTNEED: int | None = getattr(os, "POSIX_FADV_DONTNEED", None)  # not on macOS


def _retrieved(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Write ``chunks`` in order with as few system calls as the kernel allows."""
    for i in range(0, len(chunks), _IOV_MAX):
        group = chunks[i : i + _IOV_MAX]
        left = sum(len(c) for c in group)
        while left:
            written = os.writev(fd, group)
            if not written:
                raise OSError(errno.ENOSPC, "no space left to write the image")
            left -= written
            while group and written >= len(group[0]):
                written -= len(group[0])
                group = group[1:]
            if written:  # a short write ended inside a chunk
                group = [group[0][written:], *group[1:]]


async def _download_once(
    client: ApiClient, url: str, part: Path, max_bytes: int
) -> tuple[int, hashlib._Hash, ImageCheck]:
    """One attempt: continue ``part`` from where it ends; return (size, sha256, the
    image check of the whole file)."""
    try:
        have = os.stat(part).st_size
    except FileNotFoundError:
        have = 0
    async with client.open_file(url, offset=have) as stream:
        resume = stream.status == 206 and stream.offset == have and bool(have)
        if not resume:
            have = 0
        if stream.total is not None and stream.total > max_bytes:
            raise _file_error(
                Fault.TOO_LARGE, f"result is {stream.total} bytes, over the {max_bytes} cap"
            )
        size = have
        out = _PartFile(part, resume)
        try:
            # The network's chunks (as they arrived, no re-slicing) are gathered into
            # 1 MiB writes, each one hop to a worker thread.
            pending: list[bytes] = []
            buffered = 0
            async for chunk in stream.chunks():
                size += len(chunk)
                if size > max_bytes:
                    raise _file_error(Fault.TOO_LARGE, f"result exceeds the {max_bytes}-byte cap")
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= _WRITE_BLOCK:
                    await out.write(pending, last=False)
                    pending, buffered = [], 0
            await out.write(pending, last=True)
        finally:
            out.abandon()
        if stream.total is not None and size != stream.total:
            raise _file_error(Fault.SHORT_BODY, f"download ended at {size} of {stream.total} bytes")
    return size, out.digest, out.check


_FILE_CODES = {Fault.TOO_LARGE: "TOO_LARGE"}


def _file_error(fault: Fault, message: str, code: str = "") -> ApiError | FatalApiError:
    """The outcome policy's error for a download that went wrong the ``fault`` way."""
    code = code or _FILE_CODES.get(fault, "")
    return api_error(classify(Request.FILE, fault), message, 200, code, fault=fault)


async def fetch_image(
    client: ApiClient,
    url: str,
    part: Path,
    dest_for: Callable[[str], Path],
    *,
    attempts: int = 5,
    max_bytes: int = MAX_IMAGE_BYTES,
    backoff_s: float = 0.5,
    clock: Clock = SYSTEM_CLOCK,
) -> FileRecord:
    """Download ``url`` into ``part``, verify it, and rename it to ``dest_for(ext)``.

    What the outcome policy calls RETRY (broken connection, short or damaged body, 5xx)
    is tried again within ``attempts`` and the retry window, resuming where the server
    allows; then it becomes what :func:`runner.api.outcome.exhausted` says. Any other outcome
    is raised at once (LOST: a dead URL; PERMANENT: an unusable body)."""
    backoff = Backoff(attempts, initial_s=backoff_s)
    started = clock.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            size, digest, check = await _download_once(client, url, part, max_bytes)
            ext = _checked_ext(check)
            break
        except ApiError as exc:
            if exc.fault.spoils_partial or exc.outcome is not Outcome.RETRY:
                part.unlink(missing_ok=True)  # start over, never from bad bytes
            if exc.outcome is not Outcome.RETRY:
                raise
            if not backoff.allows(attempt, clock.monotonic() - started):
                outcome = exhausted(Request.FILE, exc.fault)
                if outcome is Outcome.RETRY:
                    raise
                part.unlink(missing_ok=True)
                code = "URL_EXPIRED" if outcome is Outcome.LOST else exc.code
                message = f"{exc} ({attempt} tries)"
                raise api_error(outcome, message, exc.status, code, fault=exc.fault) from None
            await clock.sleep(backoff.delay(attempt, exc.retry_after))
    dest = dest_for(ext)
    try:
        os.replace(part, dest)
    except FileNotFoundError:  # the first image into this folder
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
    return FileRecord(dest, size, digest.hexdigest(), ext)


def _checked_ext(check: ImageCheck) -> str:
    """The extension of the downloaded image. A body that is not an image (an HTML error
    page) or a damaged one is a bad body: a proxy or the transfer may be at fault, so the
    download is tried again from the start."""
    ext, whole = check.verdict()
    if ext is None:
        raise _file_error(Fault.BAD_BODY, "result is not a PNG, JPEG or WebP image", "NOT_AN_IMAGE")
    if not whole:
        raise _file_error(Fault.BAD_BODY, f"result is a damaged {ext.upper()} image", "CORRUPT")
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
        still_kept: Callable[[JobRecord], bool] = lambda rec: False,
    ) -> None:
        self.client = client
        #: the API should still have the job's task (younger than its retention): a 404
        #: then means another key or account, not images gone
        self._still_kept = still_kept
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
        failure parks the job for the next run; dead URLs are refreshed, and the job is
        ``lost`` if that fails; a permanent failure fails it (retryable)."""
        self.counters.downloading += 1
        try:
            await self._images(job)
        except ApiError as exc:
            if exc.outcome is Outcome.RETRY:
                log.warning("job %s: download failed for now: %s", job.id, exc)
                self.counters.download_parked += 1
            elif exc.outcome is Outcome.LOST:
                self.lost(job, exc.code or "URL_EXPIRED", str(exc))
            else:
                self._fail(job, exc.code or "DOWNLOAD_FAILED", str(exc), True)
            return
        finally:
            self.counters.downloading -= 1
        rec = self.ledger.index.records[job.id]
        self.ledger.append(job.id, Done(rec))
        self.counters.done += 1
        append_job(self.out, job, rec)  # metadata.jsonl: the folder as a dataset, kept current

    def lost(self, job: Job, code: str, message: str) -> None:
        """Record that the job's paid images are gone for good (``code`` URL_EXPIRED or
        TASK_GONE). Not a failure: the run goes on; ``--retry-failed`` pays again."""
        self.ledger.append(job.id, Lost(code, message[:500]))
        self.counters.lost += 1
        log.warning("job %s lost: %s %s", job.id, code, message)

    async def _images(self, job: Job) -> None:
        """Download every image of the job not on disk, refreshing dead URLs."""
        refreshes = 0
        index = 0
        while True:
            rec = self.ledger.index.records[job.id]
            if index >= len(rec.urls):
                return
            have = rec.files.get(index)
            if have is not None and (self.out / str(have["path"])).is_file():
                index += 1
                continue
            try:
                async with self._limit:
                    record = await self._fetch(job, rec.task_id or "", index, rec.urls[index])
            except LostError:
                if refreshes >= MAX_REFRESHES:
                    raise
                refreshes += 1
                await self._refresh(job, rec)
                continue  # the same index, from the fresh URLs
            path = record.path.relative_to(self.out).as_posix()
            self.ledger.append(job.id, File(index, path, record.bytes, record.sha256))
            self.counters.images += 1
            index += 1

    async def _refresh(self, job: Job, rec: JobRecord) -> None:
        """Poll the job's task for fresh result URLs and record them (a ``result``
        event). Raises LostError when there are none to be had; RETRY errors of the poll
        pass through (the job is parked, its URLs may yet be refreshed)."""
        task_id = rec.task_id
        if not task_id:
            raise LostError("the result URLs are dead and no task is known", 0, "URL_EXPIRED")
        try:
            status = await self.client.status(task_id)
        except LostError as exc:
            if self._still_kept(rec):
                raise api_error(
                    Outcome.RETRY,
                    f"the API does not know task {task_id} (404) though it keeps tasks "
                    "longer than this one has existed: another key or account? The "
                    "images are fetched by a later run",
                    exc.status,
                ) from None
            raise LostError(
                f"the result URLs are dead and the API no longer has task {task_id}: {exc}",
                exc.status,
                "TASK_GONE",
            ) from None
        if status.state is not TaskState.SUCCESS:
            raise LostError(
                f"the result URLs are dead and task {task_id} now answers {status.raw_state!r}",
                0,
                "TASK_GONE",
            )
        if status.result_urls == rec.urls:
            raise LostError(
                "the result URLs have expired (polling the task gives the same ones)",
                0,
                "URL_EXPIRED",
            )
        log.info("job %s: result URLs refreshed from task %s", job.id, task_id)
        self.ledger.append(
            job.id,
            Result(
                task_id,
                status.result_urls,
                status.create_ms if status.create_ms is not None else rec.create_ms,
                status.complete_ms if status.complete_ms is not None else rec.complete_ms,
                status.cost_ms if status.cost_ms is not None else rec.cost_ms,
            ),
        )

    async def _fetch(self, job: Job, task_id: str, index: int, url: str) -> FileRecord:
        # The temporary name is derived from the id (not the id itself), so no id can
        # steer it anywhere; the final name is checked to stay inside the folder.
        part_name = hashlib.sha1(job.id.encode()).hexdigest()[:20] + f"-{index}.part"

        def dest_for(ext: str) -> Path:
            return image_path(self.campaign.output, job, index, ext, task_id)

        return await fetch_image(
            self.client,
            url,
            self.out / ".tmp" / part_name,
            dest_for,
            attempts=self.campaign.retry.attempts,
            backoff_s=self._backoff_s,
            clock=self.client.clock,
        )
