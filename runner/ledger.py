"""The ledger: an append-only JSONL event log, the source of truth for resume.

One writer per output folder (enforced by :class:`runner.lock.FolderLock`). Each line is one JSON
object ``{"e": <event>, "job": <id>, "t": <unix s>, ...}``. Every event is applied to an
in-memory index (:class:`JobRecord` per job) by the same function that replays the file,
so what a resumed run believes is exactly what the previous run wrote.

Events, in the order a job meets them::

    submit      the request is about to be sent (written BEFORE it is sent)
    task        the API answered with a taskId (written as soon as it is known)
    unsent      the submission certainly created no task (error answer, or stopped first)
    uncertain   a submission's outcome can never be known (connection lost, or a crash
                between ``submit`` and ``task``); the job will be submitted again
    task_failed the task ended failed (code, message, class)
    result      the task succeeded: result URLs and timings
    delivered   a webhook brought the task's end (written before it is acknowledged);
                a successful one counts as ``result``
    file        one image is on disk, verified (path relative to the folder, bytes, sha256)
    done        every image of the job is on disk; the line carries the job's whole state
                (fingerprint, task, urls, files, timings, counts), so that it alone can
                stand for the job: replay keeps a done job as two packed numbers
                (fingerprint prefix; the line's offset and counts, see
                :mod:`runner.packed`) and reads the line again when its
                details are wanted. A ``done`` line is also the compacted form of a job
    failed      the job ended without images (code, message, retryable or not)
    lost        the job's paid images are gone for good (code URL_EXPIRED or TASK_GONE,
                message); like a retryable failure, ``reset`` takes it back to new
    timeout     the task outlived polling.timeout in this run; it stays live
    snap        a job's whole record at once: written by compaction (``runner.snapshot``)
                in place of its history

Durability: each line is handed to the kernel with one ``os.write`` on an ``O_APPEND``
descriptor before the call returns, so a SIGKILL at any later moment cannot lose it;
``fsync`` runs at most once a second (and on close) to bound loss on power failure.
A torn last line (a kill mid-write) is ignored and cut off before appending; a corrupt
line elsewhere is skipped and counted.
"""

from __future__ import annotations

import enum
import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .packed import PackedDone

__all__ = ["JobRecord", "Ledger", "LedgerIndex", "Phase", "read_index"]

LEDGER_NAME = "ledger.jsonl"


class Phase(enum.Enum):
    NEW = "new"  # nothing in flight: submit when due
    SUBMITTING = "submitting"  # intent written, outcome not yet known
    LIVE = "live"  # a task exists on the API
    RESULT = "result"  # the task succeeded; images still to download
    DONE = "done"
    FAILED = "failed"
    LOST = "lost"  # paid images gone for good: submitted again only after a reset


@dataclass(slots=True)
class JobRecord:
    """What the ledger knows of one job id."""

    fp: str
    phase: Phase = Phase.NEW
    task_id: str | None = None
    max_images: int = 1  # of the content last submitted
    submits: int = 0  # submissions sent (all attempts, all runs)
    failed_tasks: int = 0  # tasks that ended failed with a retryable code
    uncertain: int = 0
    urls: tuple[str, ...] = ()
    files: dict[int, dict[str, Any]] = field(default_factory=dict)
    fail_code: str | None = None
    fail_msg: str | None = None
    retryable: bool = False
    submitted_t: float | None = None  # unix seconds of the live task's submission
    create_ms: int | None = None
    complete_ms: int | None = None
    cost_ms: int | None = None
    done_t: float | None = None
    #: images the API billed for this id: every task that succeeded, in any run and under
    #: any content (an edited job paid for its earlier version too)
    billed: int = 0
    billed_task: str | None = None  # the last task counted in ``billed``
    #: images that submissions of unknown outcome may have been billed, at most
    uncertain_images: int = 0


#: a done entry's meta: line offset (40 bits) | uncertain (8) | images (16)
_OFFSET_BITS, _UNC_BITS, _IMG_BITS = 40, 8, 16


def _fp64(fp: str) -> int | None:
    try:
        return int(fp[:16], 16) if len(fp) >= 16 else None
    except ValueError:
        return None


def full_done(job: str, rec: JobRecord, t: float) -> dict[str, Any]:
    """The fields of a ``done`` line that carry the job's whole state."""
    return {
        "fp": rec.fp,
        "task": rec.task_id,
        "imgs": rec.max_images,
        "submits": rec.submits,
        "ft": rec.failed_tasks,
        "unc": rec.uncertain,
        "urls": list(rec.urls),
        "files": [{"i": i, **rec.files[i]} for i in sorted(rec.files)],
        "sub_t": rec.submitted_t,
        "create_ms": rec.create_ms,
        "complete_ms": rec.complete_ms,
        "cost_ms": rec.cost_ms,
        "billed": rec.billed,
        "bt": rec.billed_task,
        "unc_imgs": rec.uncertain_images,
    }


def _record_of_done(ev: dict[str, Any]) -> JobRecord:
    """A full ``done`` line back into a record."""
    files: dict[int, dict[str, Any]] = {}
    for f in ev.get("files") or ():
        if isinstance(f, dict):
            files[int(f.get("i", 0))] = {
                "path": f.get("path"),
                "bytes": f.get("bytes"),
                "sha256": f.get("sha256"),
            }
    imgs = ev.get("imgs")
    urls = tuple(ev.get("urls") or ())
    billed = ev.get("billed")
    return JobRecord(
        fp=str(ev.get("fp", "")),
        phase=Phase.DONE,
        task_id=ev.get("task"),
        max_images=imgs if isinstance(imgs, int) else 1,
        submits=int(ev.get("submits") or 0),
        failed_tasks=int(ev.get("ft") or 0),
        uncertain=int(ev.get("unc") or 0),
        urls=urls,
        files=files,
        submitted_t=ev.get("sub_t"),
        create_ms=ev.get("create_ms"),
        complete_ms=ev.get("complete_ms"),
        cost_ms=ev.get("cost_ms"),
        done_t=ev.get("t"),
        # a line written before billing was counted: its one successful task
        billed=billed if isinstance(billed, int) else len(urls),
        billed_task=ev.get("bt", ev.get("task")),
        uncertain_images=int(ev.get("unc_imgs") or 0),
    )


class LedgerIndex:
    """What the ledger knows, job by job, in bounded memory: a full :class:`JobRecord`
    for every job with work in hand (or a history short of done), and for every done job
    about 24 bytes (:class:`~runner.packed.PackedDone`) pointing at its full ``done``
    line, read again on demand.

    ``records`` are the full ones; iteration helpers (``values``, ``items``) cover only
    them, since done jobs need no attention until someone asks for one by id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, JobRecord] = {}
        self.done = PackedDone()
        #: billed and uncertain images of the packed done jobs beyond their files on disk
        #: (a done job whose content was edited, or whose task was resubmitted, paid more)
        self._packed_billed_extra = 0
        self._packed_uncertain_images = 0
        self._reader: Any = None

    def __len__(self) -> int:
        return len(self.records) + len(self.done)

    def __bool__(self) -> bool:
        return bool(self.records) or bool(self.done)

    def __contains__(self, job: object) -> bool:
        return job in self.records or job in self.done

    def values(self) -> Any:
        return self.records.values()

    def items(self) -> Any:
        return self.records.items()

    def done_images(self) -> int:
        """Images of the packed done jobs (full records are counted from themselves)."""
        mask = (1 << _IMG_BITS) - 1
        return sum(m & mask for m in self.done.metas())

    def billed_images(self) -> int:
        """Images the API billed over the ledger's whole life: every task it reported
        successful, times its images, whether or not they reached the disk."""
        full = sum(rec.billed for rec in self.records.values())
        return full + self.done_images() + self._packed_billed_extra

    def uncertain_images(self) -> int:
        """Images that submissions of unknown outcome may have been billed, at most."""
        full = sum(rec.uncertain_images for rec in self.records.values())
        return full + self._packed_uncertain_images

    def _pack_extra(self, rec: JobRecord, sign: int) -> None:
        self._packed_billed_extra += sign * (rec.billed - len(rec.files))
        self._packed_uncertain_images += sign * rec.uncertain_images

    def status(self, job: str, fp: str) -> tuple[str, JobRecord | None, int, int]:
        """(state, full record or None, images on disk, uncertain submissions) of ``job``
        for content ``fp``; without reading anything for a done job. State is pending,
        live, downloading, done, failed or lost; history under other content does not count."""
        packed = self.done.get(job)
        if packed is not None:
            done_fp, meta = packed
            if done_fp != _fp64(fp):
                return "pending", None, 0, 0
            unc = meta >> _IMG_BITS & ((1 << _UNC_BITS) - 1)
            return "done", None, meta & ((1 << _IMG_BITS) - 1), unc
        rec = self.records.get(job)
        if rec is None or rec.fp != fp:
            return "pending", None, 0, 0
        state = _STATES.get(rec.phase, "pending")
        return state, rec, len(rec.files), rec.uncertain

    def changed_since_done(self, job: str, fp: str) -> bool:
        """``job`` was done under other content: the manifest edited it, and it runs
        (and is paid for) again."""
        packed = self.done.get(job)
        if packed is not None:
            return packed[0] != _fp64(fp)
        rec = self.records.get(job)
        paid = (Phase.DONE, Phase.LIVE, Phase.RESULT)  # or paid for and still in flight
        return rec is not None and rec.fp != fp and rec.phase in paid

    def get(self, job: str) -> JobRecord | None:
        """The full record of ``job`` (a done one is read from its line, not kept)."""
        rec = self.records.get(job)
        if rec is not None:
            return rec
        packed = self.done.get(job)
        if packed is None:
            return None
        return _record_of_done(orjson.loads(self._line_at(packed[1] >> _UNC_BITS + _IMG_BITS)))

    def done_lines(self) -> Iterator[bytes]:
        """The full ``done`` line of every packed done job."""
        for meta in self.done.metas():
            yield self._line_at(meta >> (_UNC_BITS + _IMG_BITS))

    def revive(self, job: str) -> JobRecord | None:
        """Turn a packed done job back into a full record (an event is about to change it)."""
        if job in self.done:
            rec = self.get(job)
            self.done.pop(job)
            if rec is not None:
                self._pack_extra(rec, -1)
                self.records[job] = rec
        return self.records.get(job)

    def _line_at(self, offset: int) -> bytes:
        if self._reader is None:
            self._reader = self.path.open("rb")
        f = self._reader
        f.seek(offset)
        return bytes(f.readline())

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def apply(self, ev: dict[str, Any], offset: int) -> None:
        """Apply one event (its line starts at ``offset``)."""
        job = ev.get("job")
        if not isinstance(job, str):
            return
        if ev.get("e") == "done" and "fp" in ev:
            fp64 = _fp64(str(ev.get("fp", "")))
            rec = _record_of_done(ev)
            if job in self.done:
                self.revive(job)  # a job done again: its earlier line no longer counts
            if fp64 is None or len(rec.files) >> _IMG_BITS or offset >> _OFFSET_BITS:
                self.records[job] = rec
                return
            self.records.pop(job, None)
            self._pack_extra(rec, +1)
            unc = min(rec.uncertain, (1 << _UNC_BITS) - 1)
            self.done.put(job, fp64, (offset << _UNC_BITS | unc) << _IMG_BITS | len(rec.files))
            return
        if job in self.done:
            self.revive(job)
        if ev.get("e") == "snap":
            rec = _record_of_done(ev)
            rec.phase = Phase(ev.get("phase", "new"))
            rec.fail_code, rec.fail_msg = ev.get("code"), ev.get("msg")
            rec.retryable, rec.done_t = bool(ev.get("retryable")), ev.get("done_t")
            self.records[job] = rec
            return
        _apply(self.records, ev)


_STATES = {
    Phase.DONE: "done",
    Phase.FAILED: "failed",
    Phase.LOST: "lost",
    Phase.LIVE: "live",
    Phase.RESULT: "downloading",
}


def _apply(index: dict[str, JobRecord], ev: dict[str, Any]) -> None:
    """Apply one event to the full records: the single definition of what events mean."""
    kind = ev.get("e")
    job = ev.get("job")
    if not isinstance(job, str):
        return
    rec = index.get(job)
    if kind == "submit":
        fp = str(ev.get("fp", ""))
        if rec is None or rec.fp != fp:
            # New content under this id (desired state): earlier history no longer applies,
            # but what it cost does.
            old = rec
            rec = index[job] = JobRecord(fp=fp)
            if old is not None:
                rec.billed, rec.billed_task = old.billed, old.billed_task
                rec.uncertain, rec.uncertain_images = old.uncertain, old.uncertain_images
        rec.phase = Phase.SUBMITTING
        rec.submits += 1
        imgs = ev.get("imgs")
        rec.max_images = imgs if isinstance(imgs, int) else 1
        rec.task_id = None
        rec.submitted_t = ev.get("t")
        return
    if rec is None:
        return
    if kind == "task":
        rec.phase = Phase.LIVE
        rec.task_id = ev.get("task")
    elif kind == "unsent":
        rec.phase = Phase.NEW
    elif kind == "uncertain":
        rec.uncertain += 1
        rec.uncertain_images += rec.max_images
        rec.phase = Phase.NEW
    elif kind == "task_failed":
        rec.phase = Phase.NEW
        rec.fail_code, rec.fail_msg = ev.get("code"), ev.get("msg")
        if ev.get("class") == "retryable":
            rec.failed_tasks += 1
    elif kind == "result" or (kind == "delivered" and ev.get("state") == "success"):
        rec.phase = Phase.RESULT
        rec.urls = tuple(ev.get("urls") or ())
        task = ev.get("task")
        if task is None or task != rec.billed_task:  # a task is billed once
            rec.billed += len(rec.urls)
            rec.billed_task = task
        rec.create_ms, rec.complete_ms, rec.cost_ms = (
            ev.get("create_ms"),
            ev.get("complete_ms"),
            ev.get("cost_ms"),
        )
    elif kind == "file":
        rec.files[int(ev.get("i", 0))] = {
            "path": ev.get("path"),
            "bytes": ev.get("bytes"),
            "sha256": ev.get("sha256"),
        }
    elif kind == "done":
        rec.phase = Phase.DONE
        rec.done_t = ev.get("t")
        rec.fail_code = rec.fail_msg = None
    elif kind == "failed":
        rec.phase = Phase.FAILED
        rec.fail_code, rec.fail_msg = ev.get("code"), ev.get("msg")
        rec.retryable = bool(ev.get("retryable"))
    elif kind == "lost":
        if rec.task_id is not None and rec.billed_task != rec.task_id:
            # the task's end was never seen: it may have been billed, up to its images
            rec.uncertain_images += rec.max_images
        rec.phase = Phase.LOST
        rec.fail_code, rec.fail_msg = ev.get("code"), ev.get("msg")
        rec.retryable = True
    elif kind == "reset":
        # --retry-failed: the failure budget starts afresh
        rec.phase = Phase.NEW
        rec.failed_tasks = 0


@dataclass(slots=True)
class ReplayReport:
    lines: int = 0
    corrupt: int = 0  # unreadable lines skipped (not counting a torn tail)
    torn_tail: bool = False
    good_bytes: int = 0  # length of the file up to the last complete line


def _replay(path: Path, index: LedgerIndex) -> ReplayReport:
    report = ReplayReport()
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return report
    with f:
        offset = 0
        for line in f:
            if not line.endswith(b"\n"):
                report.torn_tail = True  # a kill mid-write: ignore it
                break
            start = offset
            offset += len(line)
            report.good_bytes = offset
            if not line.strip():
                continue
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                report.corrupt += 1
                continue
            if isinstance(ev, dict):
                report.lines += 1
                index.apply(ev, start)
            else:
                report.corrupt += 1
    return report


def read_index(folder: Path) -> tuple[LedgerIndex, ReplayReport]:
    """Replay a folder's ledger without locking or writing (for --status, --dry-run)."""
    index = LedgerIndex(folder / LEDGER_NAME)
    report = _replay(folder / LEDGER_NAME, index)
    return index, report


class Ledger:
    """The single writer of ``ledger.jsonl``; also the live index of every job's state."""

    FSYNC_EVERY_S = 1.0

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LEDGER_NAME
        self.state = LedgerIndex(self.path)
        #: full records of the jobs not (or not yet) packed as done
        self.index: dict[str, JobRecord] = self.state.records
        self.report = ReplayReport()
        self._size = 0
        self._fd: int | None = None
        self._dirty = False
        self._synced_at = 0.0

    def open(self) -> None:
        """Replay the file, cut a torn tail, and open it for appending."""
        from .snapshot import compact, worth_compacting

        self.folder.mkdir(parents=True, exist_ok=True)
        self.report = _replay(self.path, self.state)
        if worth_compacting(self.report.lines, len(self.state)):
            compact(self.path, self.state)
            self.state.close()
            self.state = LedgerIndex(self.path)
            self.index = self.state.records
            first, self.report = self.report, _replay(self.path, self.state)
            self.report.torn_tail, self.report.corrupt = first.torn_tail, first.corrupt
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.report.torn_tail:
            os.ftruncate(fd, self.report.good_bytes)
        self._size = os.fstat(fd).st_size
        self._fd = fd

    def append(self, event: str, job: str, **fields: Any) -> None:
        """Write one event durably (against a kill) and apply it to the index."""
        ev: dict[str, Any] = {"e": event, "job": job, "t": round(time.time(), 3)}
        ev.update(fields)
        if job in self.state.done:
            self.state.revive(job)
        rec = self.index.get(job)
        if event == "done" and rec is not None:
            ev.update(full_done(job, rec, ev["t"]))
        line = orjson.dumps(ev) + b"\n"
        if self._fd is None:
            raise RuntimeError("ledger is not open")
        written = os.write(self._fd, line)
        if written != len(line):
            # The disk filled up mid-line: take the fragment back, so that no later line
            # is glued to it and every line the next run reads is whole.
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise OSError(errno.ENOSPC, "no space left to write the ledger", str(self.path))
        self._dirty = True
        offset, self._size = self._size, self._size + written
        self.state.apply(ev, offset)

    def sync(self, force: bool = False) -> None:
        """fsync if there is anything new and the last one is old enough (or forced)."""
        now = time.monotonic()
        if self._fd is not None and self._dirty and (force or now - self._synced_at >= 1.0):
            os.fsync(self._fd)
            self._dirty = False
            self._synced_at = now

    def close(self) -> None:
        if self._fd is not None:
            self.sync(force=True)
            os.close(self._fd)
            self._fd = None
        self.state.close()

    def records(self) -> Iterator[tuple[str, JobRecord]]:
        return iter(self.index.items())
