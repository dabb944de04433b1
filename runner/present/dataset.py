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
drops lines of jobs done again or of images deleted since.

The loader (Arrow) wants one type per column, at every depth, across every line. Each line
is written so that this holds whatever the other lines hold, so the file loads at every
moment, appended to or rewritten:

- ``meta``: a string or null value is written as is; any other value (a number, a
  boolean, a list, an object) as its JSON text (``7`` -> ``"7"``, ``["a", 1]`` ->
  ``"[\"a\",1]"``). ``meta`` is thus a struct of strings. A job without meta has no
  ``meta`` key (a campaign without any has no ``meta`` column, which Parquet could not
  write as an empty struct).
- input fields: for ``seedream-4-5`` jobs, the defaults the API applies are filled in
  (``resolution`` 2K, ``sequential_image_generation`` disabled; ``aspect_ratio`` has none
  and is left out when unset), as the report shows them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from runner.manifest.fields import SEEDREAM_FIELDS
from runner.manifest.jobspec import Job
from runner.state.record import JobRecord

__all__ = [
    "METADATA_NAME",
    "MetadataWriter",
    "api_input",
    "append_job",
    "derived_id",
    "meta_text",
    "metadata_rows",
]

METADATA_NAME = "metadata.jsonl"
_OWN = frozenset({"file_name", "job_id", "image_index", "meta", "task_id"})
#: what the API applies to a seedream-4-5 input that leaves a field out
API_DEFAULTS = {"resolution": "2K", "sequential_image_generation": "disabled"}
_SEEDREAM_FIELDS = frozenset(SEEDREAM_FIELDS)
_MODES = ("text-to-image", "image-to-image")


def api_input(job: Job) -> dict[str, Any]:
    """The job's input with the defaults the API applies filled in.

    Only for ``seedream-4-5`` inputs, recognised by their fields: the manifest always fills
    in their ``mode`` and allows no field outside :data:`~runner.fields.SEEDREAM_FIELDS`.
    Another model's input is returned as is.
    """
    fields = job.input
    if fields.get("mode") not in _MODES or not fields.keys() <= _SEEDREAM_FIELDS:
        return fields
    if all(key in fields for key in API_DEFAULTS):
        return fields
    return {**fields, **{k: v for k, v in API_DEFAULTS.items() if k not in fields}}


def derived_id(job: Job) -> bool:
    """Whether the job's id was derived from its content (its entry set no ``id``)."""
    return job.id == "j" + job.fingerprint[:16]


def meta_text(meta: dict[str, Any]) -> dict[str, str | None]:
    """``meta`` as a line of ``metadata.jsonl`` holds it: strings and nulls as they are,
    every other value as its JSON text (one Arrow type per key, decided by the line alone)."""
    return {
        k: v if v is None or isinstance(v, str) else orjson.dumps(v, default=str).decode()
        for k, v in meta.items()
    }


def metadata_rows(out: Path, job: Job, rec: JobRecord) -> Iterator[dict[str, Any]]:
    """One row per image of a done job that is on disk, in image order."""
    for i in sorted(rec.files):
        path = rec.files[i].get("path")
        if not isinstance(path, str) or not (out / path).is_file():
            continue
        row: dict[str, Any] = {"file_name": path, "job_id": job.id, "image_index": i}
        # another model's free-form input could name a field like one of these: ours win
        row.update((k, v) for k, v in api_input(job).items() if k not in _OWN)
        if job.meta:
            row["meta"] = meta_text(job.meta)
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


class MetadataWriter:
    """Rewrites ``metadata.jsonl`` whole: :meth:`add` each done job as the caller streams
    the manifest, then :meth:`commit` (or :meth:`abort`). Lines go to a temporary file at
    once, so memory does not grow with the number of images."""

    def __init__(self, out: Path, name: str = METADATA_NAME) -> None:
        self.out = out
        self.path = out / name
        self._tmp = out / f".{name}.tmp"
        self._f = self._tmp.open("wb")
        self.rows = 0

    def add(self, job: Job, rec: JobRecord) -> None:
        for row in metadata_rows(self.out, job, rec):
            self._f.write(orjson.dumps(row, default=str) + b"\n")
            self.rows += 1

    def commit(self) -> None:
        """Put the new file in place."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)
