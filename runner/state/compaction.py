"""Ledger compaction: a snapshot of every job's state in place of its history.

Across cron runs the ledger would grow without end (five or more lines a job, plus every
poll-timeout and resubmission). When it holds well over what its state needs
(:func:`worth_compacting`), the run that holds the folder's lock rewrites it as one line
per job: a done job's own full ``done`` line, copied as it is, and for any other job a
``snap`` line carrying its whole record. Replay treats both as "this is the job now".

The rewrite goes to ``.ledger.jsonl.compact`` beside it, is fsynced, and is renamed over
the ledger (then the folder is fsynced): a kill at any moment leaves either the old file
or the new one whole. A stale temporary file from a killed compaction is overwritten.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .ledger import JobRecord, LedgerIndex

__all__ = ["compact", "snap_fields", "worth_compacting"]

#: lines beyond twice the jobs before a rewrite pays for itself
SLACK_LINES = 1000


def worth_compacting(lines: int, jobs: int) -> bool:
    return lines > 2 * jobs + SLACK_LINES


def snap_fields(rec: JobRecord) -> dict[str, Any]:
    """What a ``snap`` line adds to a job's full state: its phase and last failure."""
    return {
        "phase": rec.phase.value,
        "code": rec.fail_code,
        "msg": rec.fail_msg,
        "retryable": rec.retryable,
        "done_t": rec.done_t,
    }


def _lines(index: LedgerIndex) -> Iterator[bytes]:
    from .ledger import Phase, full_done

    now = round(time.time(), 3)
    yield from index.done_lines()
    for job, rec in index.records.items():
        ev: dict[str, Any] = {"job": job, **full_done(job, rec, now)}
        if rec.phase is Phase.DONE and rec.files:
            ev.update(e="done", t=rec.done_t or now)
        else:
            ev.update(e="snap", t=now, **snap_fields(rec))
        yield orjson.dumps(ev) + b"\n"


def compact(path: Path, index: LedgerIndex) -> None:
    """Rewrite the ledger at ``path`` as one line per job of ``index`` (its replay)."""
    tmp = path.with_name(f".{path.name}.compact")
    with tmp.open("wb") as f:
        f.writelines(_lines(index))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
