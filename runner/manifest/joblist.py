"""The manifest's job list, streamed: ``jobs:`` entries, then ``jobs_file`` lines.

Each pass re-reads the job file, so memory follows the number of distinct ids, not the
file's length. Identical jobs (same id, same fingerprint) collapse into the first with a
warning; two different jobs under one id are a :class:`~runner.errors.ManifestError`
naming both places. A later pass refuses to go on if the file changed since validation.

Owns: streaming and de-duplicating jobs. Must not know: the settings, the run.
"""

from __future__ import annotations

import codecs
import functools
import json
import os
import stat
import weakref
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

from runner.errors import ManifestError

from .fields import aspect_ratio, max_images, resolution
from .jobspec import Job, JobSpec
from .jobtable import ENTRY, JobTable, TableBuilder, table_mix
from .messages import KeyPath, Where, format_path
from .shards import id_hash

__all__ = ["JobList"]

_MAX_WARNINGS = 20
#: ids seen by ``validate`` are kept in 2**_BUCKET_BITS sorted buckets (by their top bits)
_BUCKET_BITS = 12


class _LineWhere:
    """Key paths below one JSONL line: ``prompts.jsonl:17: aspect_ratio``."""

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, path: KeyPath) -> str:
        return f"{self.label}: {format_path(path)}" if path else self.label


class JobList:
    """The manifest's jobs in order, ``jobs:`` entries then ``jobs_file`` lines.

    :meth:`validate` checks every job and builds :attr:`table`, the unique jobs as a few
    numbers each (:mod:`runner.manifest.jobtable`); :meth:`adopt` takes a table kept in
    the start-up index instead. To find repeats, ``validate`` keeps the 64-bit hash of
    every id seen, sorted in buckets with its row (12 bytes a job); afterwards only the
    repeats' positions in the stream are kept, which ``unique`` skips. Every pass over
    the file re-reads it, so memory does not grow with its length.
    """

    def __init__(
        self, spec: JobSpec, entries: list[object], where: Where, file: Path | None,
        file_display: str, file_where: str,
    ) -> None:  # fmt: skip
        self.spec, self.entries, self.where = spec, entries, where
        self.file, self.file_display, self.file_where = file, file_display, file_where
        #: the mix of the unique jobs, counted by ``validate`` (for the plan)
        self.resolutions: Counter[str] = Counter()
        self.aspect_ratios: Counter[str] = Counter()
        #: positions in the stream of the jobs that collapsed into an earlier one
        self._repeats: set[int] = set()
        self._stamp: tuple[int, int] | None = None
        #: the unique jobs, as columns (set by ``validate`` or ``adopt``)
        self.table: JobTable | None = None
        self._fd: int | None = None

    def validate(self) -> tuple[int, int, list[str]]:
        """Check every job, build :attr:`table`; return the job count, image count and
        warnings."""
        builder = TableBuilder()
        warnings: list[str] = []
        jobs = images = duplicates = 0
        keys = [array("Q") for _ in range(1 << _BUCKET_BITS)]
        rows = [array("I") for _ in range(1 << _BUCKET_BITS)]
        twins: dict[str, int] = {}  # ids whose 64-bit hash an earlier, other id has
        shift = 64 - _BUCKET_BITS
        add, same_id, fp64s = builder.add, builder.id, builder.fp64
        for position, (job, src, line, variant) in enumerate(self._all()):
            job_id, fp = job.id, job.fingerprint
            h = id_hash(job_id)
            fp64 = int(fp[:16], 16)
            bucket = keys[h >> shift]
            k = bisect_left(bucket, h)
            row: int | None = None
            if k < len(bucket) and bucket[k] == h:
                row = rows[h >> shift][k]
                if same_id(row) != job_id:  # two ids, one hash: told apart by name
                    row = twins.get(job_id)
                    if row is None:
                        twins[job_id] = len(builder)
            else:
                bucket.insert(k, h)
                rows[h >> shift].insert(k, len(builder))
            if row is None:
                inp = job.input
                imgs = max_images(inp)
                add(job_id, h, fp64, imgs, resolution(inp), aspect_ratio(inp), src, line, variant)
                jobs += 1
                images += imgs
            elif fp64s[row] == fp64:
                duplicates += 1
                self._repeats.add(position)
                if duplicates <= _MAX_WARNINGS:
                    warnings.append(
                        f"{job.where}: the same job as {self._place(*builder.place(row))} "
                        f"(id {job.id}); it runs once"
                    )
            else:
                raise ManifestError(
                    f"id {job.id!r} is already used by a different job at "
                    f"{self._place(*builder.place(row))}; give one of them another id",
                    job.where,
                )
        if duplicates > _MAX_WARNINGS:
            warnings.append(f"{duplicates - _MAX_WARNINGS} more duplicate jobs collapsed")
        # The id hashes served validation only: a run keeps the table and the repeats'
        # positions (a later pass sees the same stream: the file is checked unchanged).
        self.resolutions, self.aspect_ratios = builder.mix()
        self.table = builder.table(self._job_at)
        return jobs, images, warnings

    def adopt(self, table: JobTable, repeats: Iterable[int], stamp: tuple[int, int] | None) -> None:
        """Take ``table`` (kept for this manifest by an earlier check) instead of checking
        the manifest again; ``stamp``: the job file's size and modification time when its
        bytes were found to be the ones the table was made from."""
        self.table = table
        self._repeats = set(repeats)
        self._stamp = stamp
        self.resolutions, self.aspect_ratios = table_mix(table, None)

    def unique(self) -> Iterator[Job]:
        """The jobs ``validate`` counted, in order: each id at its first place only."""
        repeats = self._repeats
        for position, (job, _, _, _) in enumerate(self._all()):
            if position not in repeats:
                yield job

    def _place(self, src: int, line: int) -> str:
        if src & ENTRY:
            return self.where(("jobs", src & ~ENTRY))
        return f"{self.file_display}:{line}"

    def _all(self) -> Iterator[tuple[Job, int, int, int]]:
        """(job, src, line, variant) of every job: ``src`` is ``ENTRY | i`` for entry
        ``i`` of ``jobs:``, else the byte offset of its line in the job file; ``variant``
        its place in its entry's expansion."""
        expand = self.spec.expand
        for i, raw in enumerate(self.entries):
            where = functools.partial(lambda i, path: self.where(("jobs", i, *path)), i)
            for variant, job in enumerate(expand(raw, self.where(("jobs", i)), where)):
                yield job, ENTRY | i, 0, variant
        if self.file is not None:
            yield from self._lines(self.file)

    def _open(self, file: Path) -> BinaryIO:
        """The job file, opened; checked unchanged since validation on every later pass."""
        display = self.file_display
        try:
            # Not a FIFO or device: opening one could block, reading one could never end.
            if not stat.S_ISREG(file.stat().st_mode):
                raise ManifestError(f"{display} is not a regular file", self.file_where)
            handle = file.open("rb")
        except OSError as exc:
            raise ManifestError(
                f"cannot read {display}: {exc.strerror or exc}", self.file_where
            ) from None
        info = os.fstat(handle.fileno())
        stamp = (info.st_size, info.st_mtime_ns)
        if self._stamp is None:
            self._stamp = stamp
        elif stamp != self._stamp:  # a later pass must see what validation saw
            handle.close()
            raise ManifestError("changed since the manifest was checked; run again", display)
        return handle

    def _lines(self, file: Path) -> Iterator[tuple[Job, int, int, int]]:
        display, expand = self.file_display, self.spec.expand
        with self._open(file) as handle:
            try:
                offset = 0
                for n, line in enumerate(handle, 1):
                    start = offset
                    offset += len(line)
                    if n == 1 and line.startswith(codecs.BOM_UTF8):
                        line = line[3:]
                    if not line or line.isspace():
                        continue
                    label = f"{display}:{n}"
                    try:
                        raw = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise ManifestError(
                            f"not valid JSON (column {exc.colno}: {exc.msg}); each line must "
                            "be one job object",
                            label,
                        ) from None
                    # Cheap on every line (C-level counts); the careful look only when the
                    # line has more key ends than its object has keys.
                    if line.count(b'":') + line.count(b'" :') > _count_keys(raw):
                        _refuse_repeated_keys(line, label)
                    for variant, job in enumerate(expand(raw, label, _LineWhere(label))):
                        yield job, start, n, variant
            except OSError as exc:
                raise ManifestError(f"cannot read: {exc.strerror or exc}", display) from None

    def _job_at(self, src: int, line: int, variant: int, job_id: str) -> Job:
        """The job ``variant`` of the entry or line at ``src`` (see :meth:`_all`),
        expanded again; it must still be ``job_id``."""
        display = self.file_display
        if src & ENTRY:
            i = src & ~ENTRY
            where = functools.partial(lambda i, path: self.where(("jobs", i, *path)), i)
            jobs = self.spec.expand(self.entries[i], self.where(("jobs", i)), where)
        else:
            text = self._read_line(src)
            if line == 1 and text.startswith(codecs.BOM_UTF8):
                text = text[3:]
            label = f"{display}:{line}"
            try:
                jobs = self.spec.expand(orjson.loads(text), label, _LineWhere(label))
            except (orjson.JSONDecodeError, ManifestError):
                jobs = []
        if variant >= len(jobs) or jobs[variant].id != job_id:
            raise ManifestError("changed since the manifest was checked; run again", display)
        return jobs[variant]

    def _read_line(self, offset: int) -> bytes:
        """The job file's line at ``offset`` (a descriptor kept open, checked unchanged
        when opened)."""
        if self._fd is None:
            assert self.file is not None
            handle = self._open(self.file)
            self._fd = os.dup(handle.fileno())
            handle.close()
            weakref.finalize(self, os.close, self._fd)
        chunks = []
        while True:
            block = os.pread(self._fd, 1 << 16, offset)
            end = block.find(b"\n")
            if end >= 0 or not block:
                chunks.append(block[: end + 1] if end >= 0 else block)
                return b"".join(chunks)
            chunks.append(block)
            offset += len(block)


def _count_keys(value: object) -> int:
    """Keys in a parsed JSON value, at every depth (scalars are not visited)."""
    n = 0
    if type(value) is dict:
        n = len(value)
        value = value.values()
    elif type(value) is not list:
        return 0
    for item in value:
        if type(item) is dict or type(item) is list:
            n += _count_keys(item)
    return n


def _refuse_repeated_keys(line: bytes, label: str) -> None:
    """The line has more ``"...":`` than its object has keys: a key may be repeated
    (orjson keeps the last one silently), or a string merely holds ``":``. Look closely."""

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise ManifestError(
                    f"{key!r} is given twice in the same object; a JSON reader would keep "
                    "only the last, silently. Delete one",
                    label,
                )
            seen.add(key)
        return dict(items)

    json.loads(line, object_pairs_hook=pairs)
