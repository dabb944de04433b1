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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson

from runner.errors import ManifestError

from .fields import aspect_ratio, resolution
from .jobspec import Job, JobSpec
from .messages import KeyPath, Where, format_path

__all__ = ["JobList"]

_MAX_WARNINGS = 20
_ENTRY = 1 << 40  # places: a jobs_file line number, or _ENTRY + index into ``jobs:``
_PLACE_BITS = 41
_PLACE_MASK = (1 << _PLACE_BITS) - 1


class _LineWhere:
    """Key paths below one JSONL line: ``prompts.jsonl:17: aspect_ratio``."""

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, path: KeyPath) -> str:
        return f"{self.label}: {format_path(path)}" if path else self.label


class JobList:
    """The manifest's jobs in order, ``jobs:`` entries then ``jobs_file`` lines.

    Every pass re-reads the file, so memory does not grow with its length. ``validate``
    remembers, per id, the first place it appeared and a 64-bit fingerprint prefix, packed
    into one int (about 150 bytes a job with the key), to find repeats; it then keeps only
    the repeats' positions in the stream, which ``unique`` skips.
    """

    def __init__(
        self, spec: JobSpec, entries: list[object], where: Where, file: Path | None,
        file_display: str, file_where: str,
    ) -> None:  # fmt: skip
        self.spec, self.entries, self.where = spec, entries, where
        self.file, self.file_display, self.file_where = file, file_display, file_where
        self._first: dict[str, int] = {}
        #: the mix of the unique jobs, counted by ``validate`` (for the plan)
        self.resolutions: Counter[str] = Counter()
        self.aspect_ratios: Counter[str] = Counter()
        #: positions in the stream of the jobs that collapsed into an earlier one
        self._repeats: set[int] = set()
        self._stamp: tuple[int, int] | None = None

    def validate(self) -> tuple[int, int, list[str]]:
        """Check every job; return the job count, image count and warnings."""
        first, warnings = self._first, []
        jobs = images = duplicates = 0
        for position, (job, place) in enumerate(self._all()):
            packed = int(job.fingerprint[:16], 16) << _PLACE_BITS | place
            earlier = first.get(job.id)
            if earlier is None:
                first[job.id] = packed
                jobs += 1
                images += job.max_images
                self.resolutions[resolution(job.input)] += 1
                self.aspect_ratios[aspect_ratio(job.input)] += 1
            elif earlier >> _PLACE_BITS == packed >> _PLACE_BITS:
                duplicates += 1
                self._repeats.add(position)
                if duplicates <= _MAX_WARNINGS:
                    warnings.append(
                        f"{job.where}: the same job as {self._place(earlier)} (id {job.id}); "
                        "it runs once"
                    )
            else:
                raise ManifestError(
                    f"id {job.id!r} is already used by a different job at "
                    f"{self._place(earlier)}; give one of them another id",
                    job.where,
                )
        if duplicates > _MAX_WARNINGS:
            warnings.append(f"{duplicates - _MAX_WARNINGS} more duplicate jobs collapsed")
        # The id map served validation only: a run keeps just the repeats' positions (a
        # later pass sees the same stream: the file is checked unchanged), so memory does
        # not grow with the number of ids.
        self._first = {}
        return jobs, images, warnings

    def unique(self) -> Iterator[Job]:
        """The jobs ``validate`` counted, in order: each id at its first place only."""
        repeats = self._repeats
        for position, (job, _) in enumerate(self._all()):
            if position not in repeats:
                yield job

    def _place(self, packed: int) -> str:
        place = packed & _PLACE_MASK
        if place >= _ENTRY:
            return self.where(("jobs", place - _ENTRY))
        return f"{self.file_display}:{place}"

    def _all(self) -> Iterator[tuple[Job, int]]:
        expand = self.spec.expand
        for i, raw in enumerate(self.entries):
            where = functools.partial(lambda i, path: self.where(("jobs", i, *path)), i)
            for job in expand(raw, self.where(("jobs", i)), where):
                yield job, _ENTRY + i
        if self.file is not None:
            yield from self._lines(self.file)

    def _lines(self, file: Path) -> Iterator[tuple[Job, int]]:
        display, expand = self.file_display, self.spec.expand
        try:
            # Not a FIFO or device: opening one could block, reading one could never end.
            if not stat.S_ISREG(file.stat().st_mode):
                raise ManifestError(f"{display} is not a regular file", self.file_where)
            handle = file.open("rb")
        except OSError as exc:
            raise ManifestError(
                f"cannot read {display}: {exc.strerror or exc}", self.file_where
            ) from None
        with handle:
            info = os.fstat(handle.fileno())
            stamp = (info.st_size, info.st_mtime_ns)
            if self._stamp is None:
                self._stamp = stamp
            elif stamp != self._stamp:  # a later pass must see what validation saw
                raise ManifestError("changed since the manifest was checked; run again", display)
            try:
                for n, line in enumerate(handle, 1):
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
                    for job in expand(raw, label, _LineWhere(label)):
                        yield job, n
            except OSError as exc:
                raise ManifestError(f"cannot read: {exc.strerror or exc}", display) from None


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
