"""What the ledger knows, job by job: replay's one definition of what each event means,
kept in bounded memory.

:meth:`LedgerIndex.apply` is the single place an event changes a job: the writer applies
each event as it appends it, and replay applies every line of the file the same way, so
what a resumed run believes is exactly what the previous run wrote. (Replay takes the
commonest line, a whole ``done`` line for a job it holds nothing of, through
:meth:`LedgerIndex.apply_done`, which packs the same numbers without making the record;
``tests/test_startup_index.py`` replays ledgers both ways.)

Memory: a full :class:`~runner.state.record.JobRecord` for every job with work in hand
(or a history short of done), and for every done job about 24 bytes
(:class:`~runner.state.packed.PackedDone`): the fingerprint's prefix, and the offset of
its ``done`` line (which carries the job's whole record) with its image and uncertain
counts, packed into one number. The line is read again when its details are wanted.

Owns: replay semantics and the packing. Must not know: how lines are written or read
from disk (:mod:`runner.state.ledger`), the manifest, the network.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import ItemsView, Iterable, Iterator, Sequence, ValuesView
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .events import (
    Delivered,
    Done,
    Failed,
    File,
    Line,
    Lost,
    Reset,
    Result,
    Snap,
    Submit,
    Task,
    TaskFailed,
    Uncertain,
    Unsent,
    decode,
    encode,
)
from .packed import PackedDone
from .record import JobRecord, JobState, Phase

__all__ = ["JobStatus", "LedgerIndex"]

#: a done entry's meta: line offset (40 bits) | uncertain (8) | images (16)
_OFFSET_BITS, _UNC_BITS, _IMG_BITS = 40, 8, 16


class JobStatus(NamedTuple):
    """A job's standing for one content: its state, its full record (None when the
    ledger has none for this content, or for a packed done job), images on disk and
    uncertain submissions."""

    state: JobState
    record: JobRecord | None
    images: int
    uncertain: int


_PENDING = JobStatus(JobState.PENDING, None, 0, 0)


def _fp64(fp: str) -> int | None:
    try:
        return int(fp[:16], 16) if len(fp) >= 16 else None
    except ValueError:
        return None


class LedgerIndex:
    """Every job of one ledger file (``path``). ``records`` are the full records;
    iteration helpers (``values``, ``items``) cover only them, since done jobs need no
    attention until someone asks for one by id."""

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

    def values(self) -> ValuesView[JobRecord]:
        return self.records.values()

    def items(self) -> ItemsView[str, JobRecord]:
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

    def status(self, job: str, fp: str) -> JobStatus:
        """The standing of ``job`` for content ``fp``, without reading anything for a
        done job; history under other content does not count (the job is pending)."""
        packed = self.done.get(job)
        if packed is not None:
            done_fp, meta = packed
            if done_fp != _fp64(fp):
                return _PENDING
            unc = meta >> _IMG_BITS & ((1 << _UNC_BITS) - 1)
            return JobStatus(JobState.DONE, None, meta & ((1 << _IMG_BITS) - 1), unc)
        rec = self.records.get(job)
        if rec is None or rec.fp != fp:
            return _PENDING
        return JobStatus(rec.phase.state, rec, len(rec.files), rec.uncertain)

    def changed_since_done(self, job: str, fp: str) -> bool:
        """``job`` was done (or has paid work in flight) under other content: the
        manifest edited it, and it runs (and is paid for) again."""
        packed = self.done.get(job)
        if packed is not None:
            return packed[0] != _fp64(fp)
        rec = self.records.get(job)
        paid = (Phase.DONE, Phase.LIVE, Phase.RESULT)  # or paid for and still in flight
        return rec is not None and rec.fp != fp and rec.phase in paid

    def done_as(self, job: str, fp64: int) -> bool:
        """``job`` is a packed done job whose content's fingerprint starts with the 64
        bits ``fp64`` (what :meth:`status` calls done)."""
        packed = self.done.get(job)
        return packed is not None and packed[0] == fp64

    def knows(self, job: str) -> bool:
        """The ledger has a line about ``job`` (under any content)."""
        return job in self

    def done_rows(
        self, idh: Sequence[int], fp64: Sequence[int], rows: Iterable[int]
    ) -> tuple[int, int, int, array[int]]:
        """Of ``rows`` (positions into ``idh``, the ids' 64-bit hashes, and ``fp64``, their
        fingerprints' first 64 bits), the jobs done under that content with their packed
        entry, counted without a look at their ids: (jobs, their images, their uncertain
        submissions), and the other rows, in order, each for :meth:`status` to answer.
        What :meth:`status` says of each row counted (``done``), in one pass of numbers."""
        keys_b, fps_b, metas_b = self.done.columns()
        shift = PackedDone.BUCKET_SHIFT
        img_mask, unc_mask = (1 << _IMG_BITS) - 1, (1 << _UNC_BITS) - 1
        jobs = images = uncertain = 0
        rest = array("Q")
        keep = rest.append
        for row in rows:
            h = idh[row]
            b = h >> shift
            keys = keys_b[b]
            i = bisect_left(keys, h)
            if i < len(keys) and keys[i] == h and fps_b[b][i] == fp64[row]:
                meta = metas_b[b][i]
                jobs += 1
                images += meta & img_mask
                uncertain += meta >> _IMG_BITS & unc_mask
            else:
                keep(row)
        return jobs, images, uncertain, rest

    def saved(self) -> tuple[dict[str, int], dict[str, Any]]:
        """This state as numbers and sections, for :mod:`runner.state.replay_index`: the
        packed done map's arrays, and every full record as its ``snap`` line."""
        numbers = {
            "billed_extra": self._packed_billed_extra,
            "uncertain_images": self._packed_uncertain_images,
        }
        records = b"".join(encode(job, Snap(rec), 0) for job, rec in self.records.items())
        return numbers, {**self.done.dump(), "records": records}

    def restore(self, numbers: dict[str, Any], sections: dict[str, Any]) -> None:
        """Take the state :meth:`saved` gave (this index must be empty). Raises
        ValueError (or KeyError, TypeError) if they are not such a state."""
        done = PackedDone.load(
            sections["lengths"], sections["keys"], sections["fps"], sections["metas"]
        )
        records: dict[str, JobRecord] = {}
        for raw in bytes(sections["records"]).splitlines():
            line = decode(orjson.loads(raw))
            if line is None or not isinstance(line[2], Snap):
                raise ValueError("not a record")
            records[line[0]] = line[2].record
        self.done, self.records = done, records
        self._packed_billed_extra = int(numbers["billed_extra"])
        self._packed_uncertain_images = int(numbers["uncertain_images"])

    def get(self, job: str) -> JobRecord | None:
        """The full record of ``job`` (a done one is read from its line, not kept)."""
        rec = self.records.get(job)
        if rec is not None:
            return rec
        packed = self.done.get(job)
        if packed is None:
            return None
        return _record_of(self._line_at(packed[1] >> _UNC_BITS + _IMG_BITS))

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

    # -- what events mean ------------------------------------------------------------

    def apply(self, line: Line, offset: int) -> None:
        """Apply one line's event (the line starts at ``offset`` in the file)."""
        job, t, event = line
        # A job is in ``records`` or in ``done``, never both: only a miss needs the hash.
        rec = self.records.get(job)
        if rec is None and job in self.done:
            # An event for a packed done job needs its full record again; a done line
            # too (the job's earlier done line no longer counts).
            rec = self.revive(job)
        if isinstance(event, Done) and event.record is not None:
            self._pack(job, event.record, offset)
        elif isinstance(event, Snap):
            self.records[job] = event.record
        elif isinstance(event, Submit):
            self._submit(job, rec, event, t)
        elif rec is None:
            return
        elif isinstance(event, Task):
            rec.phase = Phase.LIVE
            rec.task_id = event.task_id
        elif isinstance(event, File):
            rec.files[int(event.index)] = {
                "path": event.path,
                "bytes": event.size,
                "sha256": event.sha256,
            }
        elif isinstance(event, Result) or (
            isinstance(event, Delivered) and event.state == "success"
        ):
            self._result(rec, event)
        elif isinstance(event, Unsent):
            rec.phase = Phase.NEW
        elif isinstance(event, Uncertain):
            rec.uncertain += 1
            rec.uncertain_images += rec.max_images
            rec.phase = Phase.NEW
        elif isinstance(event, TaskFailed):
            rec.phase = Phase.NEW
            rec.fail_code, rec.fail_msg = event.code, event.message
            if event.fail_class == "retryable":
                rec.failed_tasks += 1
        elif isinstance(event, Done):  # a short line, without the whole record
            rec.phase = Phase.DONE
            rec.done_t = t
            rec.fail_code = rec.fail_msg = None
        elif isinstance(event, Failed):
            rec.phase = Phase.FAILED
            rec.fail_code, rec.fail_msg = event.code, event.message
            rec.retryable = bool(event.retryable)
        elif isinstance(event, Lost):
            if rec.task_id is not None and rec.billed_task != rec.task_id:
                # the task's end was never seen: it may have been billed, up to its images
                rec.uncertain_images += rec.max_images
            rec.phase = Phase.LOST
            rec.fail_code, rec.fail_msg = event.code, event.message
            rec.retryable = True
        elif isinstance(event, Reset):
            # --retry-failed: the failure budget starts afresh
            rec.phase = Phase.NEW
            rec.failed_tasks = 0
        # timeout (and a kind this runner does not know) changes nothing

    def apply_done(self, raw: dict[str, Any], offset: int) -> bool:
        """Apply the parsed line ``raw`` as :meth:`apply` would if it is a ``done`` line
        carrying a whole record, for a job the index holds nothing of, that packs (a
        compacted ledger's every done job): the same numbers, without making the record.
        False, with nothing changed, for any other line: :meth:`apply` it."""
        job = raw.get("job")
        if raw.get("e") != "done" or "fp" not in raw or not isinstance(job, str):
            return False
        if job in self.records:
            return False
        try:
            # What events._record makes of these keys, as far as packing uses them.
            fp64 = _fp64(str(raw.get("fp", "")))
            files = {int(f.get("i", 0)) for f in raw.get("files") or () if isinstance(f, dict)}
            urls = tuple(raw.get("urls") or ())
            billed = raw.get("billed")
            billed = billed if isinstance(billed, int) else len(urls)
            uncertain = int(raw.get("unc") or 0)
            uncertain_images = int(raw.get("unc_imgs") or 0)
            int(raw.get("submits") or 0), int(raw.get("ft") or 0)  # as _record checks them
        except (TypeError, ValueError, AttributeError):
            return False
        images = len(files)
        if fp64 is None or images >> _IMG_BITS or offset >> _OFFSET_BITS or uncertain < 0:
            return False
        unc = min(uncertain, (1 << _UNC_BITS) - 1)
        if not self.done.put_new(job, fp64, (offset << _UNC_BITS | unc) << _IMG_BITS | images):
            return False  # packed already: its earlier line no longer counts (apply)
        self._packed_billed_extra += billed - images
        self._packed_uncertain_images += uncertain_images
        return True

    def _pack(self, job: str, whole: JobRecord, offset: int) -> None:
        """A done line: keep the job as two numbers, or whole where they cannot hold it."""
        fp64, images = _fp64(whole.fp), len(whole.files)
        if fp64 is None or images >> _IMG_BITS or offset >> _OFFSET_BITS:
            self.records[job] = whole
            return
        self.records.pop(job, None)
        self._pack_extra(whole, +1)
        unc = min(whole.uncertain, (1 << _UNC_BITS) - 1)
        self.done.put(job, fp64, (offset << _UNC_BITS | unc) << _IMG_BITS | images)

    def _submit(self, job: str, rec: JobRecord | None, event: Submit, t: Any) -> None:
        fp = str(event.fingerprint)
        if rec is None or rec.fp != fp:
            # New content under this id (desired state): earlier history no longer applies,
            # but what it cost does.
            old = rec
            rec = self.records[job] = JobRecord(fp=fp)
            if old is not None:
                rec.billed, rec.billed_task = old.billed, old.billed_task
                rec.uncertain, rec.uncertain_images = old.uncertain, old.uncertain_images
        rec.phase = Phase.SUBMITTING
        rec.submits += 1
        imgs = event.max_images
        rec.max_images = imgs if isinstance(imgs, int) else 1
        rec.task_id = None
        rec.submitted_t = t

    @staticmethod
    def _result(rec: JobRecord, event: Result | Delivered) -> None:
        rec.phase = Phase.RESULT
        rec.urls = tuple(event.urls or ())
        task = event.task_id
        if task is None or task != rec.billed_task:  # a task is billed once
            rec.billed += len(rec.urls)
            rec.billed_task = task
        rec.create_ms, rec.complete_ms, rec.cost_ms = (
            event.create_ms,
            event.complete_ms,
            event.cost_ms,
        )


def _record_of(raw_line: bytes) -> JobRecord | None:
    """The whole record a ``done`` (or ``snap``) line carries."""
    line = decode(orjson.loads(raw_line))
    event = line[2] if line is not None else None
    if isinstance(event, Done | Snap):
        return event.record
    return None
