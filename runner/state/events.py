"""The ledger's line format: one typed event per line, one encoder, one decoder.

Each line is one JSON object ``{"e": <kind>, "job": <id>, "t": <unix s>, ...}`` followed
by the event's own keys. The keys are the format on disk, kept as they have always been
written (short, because a big campaign writes millions of lines), so that every ledger
written by an earlier runner replays as it did. Events, in the order a job meets them::

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
    done        every image of the job is on disk; the line carries the job's whole record
                (:func:`whole`), so that it alone can stand for the job. A ``done`` line
                is also the compacted form of a done job
    failed      the job ended without images (code, message, retryable or not)
    lost        the job's paid images are gone for good (code URL_EXPIRED or TASK_GONE,
                message); like a retryable failure, ``reset`` takes it back to new
    timeout     the task outlived polling.timeout in this run; it stays live
    reset       --retry-failed: a failed or lost job starts afresh
    snap        a job's whole record at once: written by compaction in place of its
                history, and by adoption (:mod:`runner.run.adopt`)

:func:`decode` takes values as they stand in the line: replay
(:meth:`runner.state.index.LedgerIndex.apply`) checks what it relies on, so a line edited
by hand cannot make it crash where it did not before.

Owns: the kinds, their keys and their order on disk. Must not know: what an event does
to a job (:mod:`runner.state.index`), files, the network.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import orjson

from .record import JobRecord, Phase

__all__ = [
    "Delivered",
    "Done",
    "Event",
    "Failed",
    "File",
    "Line",
    "Lost",
    "Reset",
    "Result",
    "Snap",
    "Submit",
    "Task",
    "TaskFailed",
    "Timeout",
    "Uncertain",
    "Unsent",
    "decode",
    "encode",
    "whole",
]


@dataclass(frozen=True, slots=True)
class Submit:
    """A submission is about to leave, for content ``fingerprint``."""

    KIND: ClassVar[str] = "submit"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = (("fp", ""), ("imgs", None))
    fingerprint: str
    max_images: int


@dataclass(frozen=True, slots=True)
class Task:
    """The API answered the submission with a task."""

    KIND: ClassVar[str] = "task"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = (("task", None),)
    task_id: str


@dataclass(frozen=True, slots=True)
class Unsent:
    """The submission certainly created no task (``status``: the HTTP status, 0 if none)."""

    KIND: ClassVar[str] = "unsent"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = (("status", None),)
    status: int


@dataclass(frozen=True, slots=True)
class Uncertain:
    """A submission's outcome can never be known."""

    KIND: ClassVar[str] = "uncertain"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = (("why", None),)
    why: str


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """The task ended failed; ``fail_class`` is how the outcome policy treats its code
    (``permanent``, ``retryable`` or ``fatal``)."""

    KIND: ClassVar[str] = "task_failed"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("task", None),
        ("code", None),
        ("msg", None),
        ("class", None),
    )
    task_id: str
    code: str | None
    message: str | None
    fail_class: str


@dataclass(frozen=True, slots=True)
class Result:
    """The task succeeded (or its dead URLs were refreshed): its result URLs and timings."""

    KIND: ClassVar[str] = "result"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("task", None),
        ("urls", None),
        ("create_ms", None),
        ("complete_ms", None),
        ("cost_ms", None),
    )
    task_id: str
    urls: tuple[str, ...]
    create_ms: int | None
    complete_ms: int | None
    cost_ms: int | None


@dataclass(frozen=True, slots=True)
class Delivered:
    """A webhook brought the task's end (``state``: ``success`` or ``failed``)."""

    KIND: ClassVar[str] = "delivered"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("task", None),
        ("state", None),
        ("urls", None),
        ("code", None),
        ("create_ms", None),
        ("complete_ms", None),
        ("cost_ms", None),
    )
    task_id: str
    state: str
    urls: tuple[str, ...]
    code: str | None
    create_ms: int | None
    complete_ms: int | None
    cost_ms: int | None


@dataclass(frozen=True, slots=True)
class File:
    """Image ``index`` is on disk at ``path`` (relative to the folder), verified."""

    KIND: ClassVar[str] = "file"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("i", 0),
        ("path", None),
        ("bytes", None),
        ("sha256", None),
    )
    index: int
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The job ended without images."""

    KIND: ClassVar[str] = "failed"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("code", None),
        ("msg", None),
        ("retryable", None),
    )
    code: str
    message: str
    retryable: bool


@dataclass(frozen=True, slots=True)
class Lost:
    """The job's paid images are gone for good."""

    KIND: ClassVar[str] = "lost"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = (("code", None), ("msg", None))
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Timeout:
    """The task outlived ``polling.timeout`` in this run; it stays live."""

    KIND: ClassVar[str] = "timeout"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = (("task", None),)
    task_id: str


@dataclass(frozen=True, slots=True)
class Reset:
    """``--retry-failed``: the job starts afresh."""

    KIND: ClassVar[str] = "reset"
    KEYS: ClassVar[tuple[tuple[str, Any], ...]] = ()


@dataclass(frozen=True, slots=True)
class Done:
    """Every image is on disk. The line carries ``record``, the job's whole state (None
    only in a line an early runner wrote without it); ``origin`` is the folder, relative
    to this one, of the layout it was adopted from."""

    KIND: ClassVar[str] = "done"
    record: JobRecord | None
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class Snap:
    """The job's whole state at once (phase and last failure included)."""

    KIND: ClassVar[str] = "snap"
    record: JobRecord
    origin: str | None = None


#: every kind of line
Event = (Submit | Task | Unsent | Uncertain | TaskFailed | Result | Delivered | File | Failed) | (
    Lost | Timeout | Reset | Done | Snap
)

#: the kinds whose keys are their own fields, in order (``KEYS``: each key on disk, and
#: the value replay takes when a line lacks it)
_PLAIN_KINDS = (Submit, Task, Unsent, Uncertain, TaskFailed, Result, Delivered, File, Failed)
_PLAIN: dict[Any, Any] = {
    cls.KIND: (cls, tuple(f.name for f in fields(cls)))
    for cls in (*_PLAIN_KINDS, Lost, Timeout, Reset)
}


#: one decoded line: the job, its ``t`` as written, and its event (None for a kind this
#: runner does not know)
Line = tuple[str, Any, Event | None]


def whole(rec: JobRecord) -> dict[str, Any]:
    """The keys of a ``done`` or ``snap`` line that carry a job's whole record."""
    return {
        "task": rec.task_id,
        "fp": rec.fp,
        "imgs": rec.max_images,
        "submits": rec.submits,
        "ft": rec.failed_tasks,
        "unc": rec.uncertain,
        "urls": rec.urls,
        "files": [{"i": i, **rec.files[i]} for i in sorted(rec.files)],
        "sub_t": rec.submitted_t,
        "create_ms": rec.create_ms,
        "complete_ms": rec.complete_ms,
        "cost_ms": rec.cost_ms,
        "billed": rec.billed,
        "bt": rec.billed_task,
        "unc_imgs": rec.uncertain_images,
    }


def _record(raw: dict[str, Any]) -> JobRecord:
    """The whole record a ``done`` or ``snap`` line carries."""
    files: dict[int, dict[str, Any]] = {}
    for f in raw.get("files") or ():
        if isinstance(f, dict):
            files[int(f.get("i", 0))] = {
                "path": f.get("path"),
                "bytes": f.get("bytes"),
                "sha256": f.get("sha256"),
            }
    imgs = raw.get("imgs")
    urls = tuple(raw.get("urls") or ())
    billed = raw.get("billed")
    return JobRecord(
        fp=str(raw.get("fp", "")),
        phase=Phase.DONE,
        task_id=raw.get("task"),
        max_images=imgs if isinstance(imgs, int) else 1,
        submits=int(raw.get("submits") or 0),
        failed_tasks=int(raw.get("ft") or 0),
        uncertain=int(raw.get("unc") or 0),
        urls=urls,
        files=files,
        submitted_t=raw.get("sub_t"),
        create_ms=raw.get("create_ms"),
        complete_ms=raw.get("complete_ms"),
        cost_ms=raw.get("cost_ms"),
        done_t=raw.get("t"),
        # a line written before billing was counted: its one successful task
        billed=billed if isinstance(billed, int) else len(urls),
        billed_task=raw.get("bt", raw.get("task")),
        uncertain_images=int(raw.get("unc_imgs") or 0),
    )


def encode(job: str, event: Event, t: float) -> bytes:
    """The line of ``event`` for ``job`` at wall time ``t``, newline included."""
    line: dict[str, Any] = {"e": event.KIND, "job": job, "t": t}
    if isinstance(event, Done | Snap):
        if event.record is not None:
            line.update(whole(event.record))
        if event.origin is not None:
            line["from"] = event.origin
        if isinstance(event, Snap):
            rec = event.record
            line["phase"] = rec.phase.value
            line["code"], line["msg"] = rec.fail_code, rec.fail_msg
            line["retryable"], line["done_t"] = rec.retryable, rec.done_t
    else:
        names = _PLAIN[event.KIND][1]
        for (key, _), name in zip(event.KEYS, names, strict=True):
            line[key] = getattr(event, name)
    return orjson.dumps(line) + b"\n"


#: fields that hold a number (times); anything else in them (a hand-edited or damaged
#: line) is read as absent
_NUMBERS = ("create_ms", "complete_ms", "cost_ms", "t", "sub_t", "done_t")


def decode(raw: dict[str, Any]) -> Line | None:
    """The event of one parsed line; None for a line that names no job."""
    job = raw.get("job")
    if not isinstance(job, str):
        return None
    for key in _NUMBERS:
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raw[key] = None
    kind = raw.get("e")
    plain = _PLAIN.get(kind)
    event: Event | None
    if plain is not None:
        cls = plain[0]
        event = cls(*[raw.get(key, default) for key, default in cls.KEYS])
    elif kind == "done":
        event = Done(_record(raw) if "fp" in raw else None, raw.get("from"))
    elif kind == "snap":
        rec = _record(raw)
        rec.phase = Phase(raw.get("phase", "new"))
        rec.fail_code, rec.fail_msg = raw.get("code"), raw.get("msg")
        rec.retryable, rec.done_t = bool(raw.get("retryable")), raw.get("done_t")
        event = Snap(rec, raw.get("from"))
    else:
        event = None
    return job, raw.get("t"), event
