"""``metadata.jsonl``: the output folder as a Hugging Face ``imagefolder`` dataset.

One line per image on disk, at the output folder's root::

    {"file_name": "images/hero.16-9/0.png", "job_id": "hero.16-9", "image_index": 0,
     "prompt": "...", "resolution": "2K", "aspect_ratio": "16:9", ..., "meta": {...},
     "task_id": "..."}

``file_name`` is relative to the folder; the job's input fields (the prompt among them)
are columns of their own; ``meta`` is the job's meta as one object. So::

    from datasets import load_dataset
    ds = load_dataset("imagefolder", data_dir="out/spring-catalog", split="train")

gives one row per image with its ``image``, ``prompt`` and ``meta``.

Kept current in two ways: :func:`append_job` adds a done job's lines as it finishes
(during a run), and :class:`MetadataWriter` rewrites the file whole from the ledger at the
end of every run and on ``--report`` (to a temporary name, then renamed). The rewrite
drops lines of jobs done again or of images deleted since, and keeps each ``meta`` key
one JSON type across the file, as the dataset loader requires: a key whose values mix
types (a number here, a string there) is written as text in every line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from runner.manifest.jobspec import Job
from runner.state.record import JobRecord

__all__ = ["METADATA_NAME", "MetadataWriter", "append_job", "metadata_rows"]

METADATA_NAME = "metadata.jsonl"
_OWN = frozenset({"file_name", "job_id", "image_index", "meta", "task_id"})


def metadata_rows(out: Path, job: Job, rec: JobRecord) -> Iterator[dict[str, Any]]:
    """One row per image of a done job that is on disk, in image order."""
    for i in sorted(rec.files):
        path = rec.files[i].get("path")
        if not isinstance(path, str) or not (out / path).is_file():
            continue
        row: dict[str, Any] = {"file_name": path, "job_id": job.id, "image_index": i}
        # another model's free-form input could name a field like one of these: ours win
        row.update((k, v) for k, v in job.input.items() if k not in _OWN)
        row["meta"] = job.meta
        row["task_id"] = rec.task_id
        yield row


def append_job(out: Path, job: Job, rec: JobRecord) -> None:
    """Append a job's rows as it is done (one ``write`` on an ``O_APPEND`` descriptor, so
    lines never interleave). Never raises: the dataset file is a convenience, and the
    rewrite at the end of the run repairs what a failure here left out."""
    data = b"".join(orjson.dumps(row, default=str) + b"\n" for row in metadata_rows(out, job, rec))
    if not data:
        return
    try:
        fd = os.open(out / METADATA_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError:
        pass


def _kind(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def _text(value: object) -> object:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


class MetadataWriter:
    """Rewrites ``metadata.jsonl`` whole: :meth:`add` each done job as the caller streams
    the manifest, then :meth:`commit` (or :meth:`abort`). Lines go to a temporary file at
    once, so memory does not grow with the number of images."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / METADATA_NAME
        self._tmp = out / f".{METADATA_NAME}.tmp"
        self._f = self._tmp.open("wb")
        self._kinds: dict[str, set[str]] = {}
        self.rows = 0

    def add(self, job: Job, rec: JobRecord) -> None:
        for row in metadata_rows(self.out, job, rec):
            for key, value in job.meta.items():
                kind = _kind(value)
                if kind is not None:
                    self._kinds.setdefault(key, set()).add(kind)
            self._f.write(orjson.dumps(row, default=str) + b"\n")
            self.rows += 1

    def commit(self) -> None:
        """Put the new file in place (first writing mixed-type meta keys as text)."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        mixed = {key for key, kinds in self._kinds.items() if len(kinds) > 1}
        if mixed:
            self._retype(mixed)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)

    def _retype(self, keys: set[str]) -> None:
        fixed = self._tmp.with_name(self._tmp.name + "2")
        with self._tmp.open("rb") as src, fixed.open("wb") as dst:
            for line in src:
                row = orjson.loads(line)
                meta = row.get("meta")
                if isinstance(meta, dict):
                    row["meta"] = {k: _text(v) if k in keys else v for k, v in meta.items()}
                dst.write(orjson.dumps(row) + b"\n")
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(fixed, self._tmp)
