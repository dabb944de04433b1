"""Ledger compaction: a snapshot of every job's state in place of its history.

Across cron runs the ledger would grow without end (five or more lines a job, plus every
poll-timeout and resubmission). When it holds well over what its state needs
(:func:`worth_compacting`), the run that holds the folder's lock rewrites it as one line
per job: a done job's own full ``done`` line, copied as it is, and for any other job a
``snap`` line carrying its whole record. Replay treats both as "this is the job now".

The rewrite goes to ``.ledger.jsonl.compact`` beside it, is fsynced, and is renamed over
the ledger (then the folder is fsynced): a kill at any moment leaves either the old file
or the new one whole. A stale temporary file from a killed compaction is overwritten.
The state the start-up index kept for the old file is forgotten (it would not fit the
new one anyway: another inode, other bytes).

Owns: when to compact, and the rewrite. Must not know: what events mean.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from . import replay_index
from .events import Done, Snap, encode
from .index import LedgerIndex
from .record import Phase

__all__ = ["compact", "worth_compacting"]

#: lines beyond twice the jobs before a rewrite pays for itself
SLACK_LINES = 1000


def worth_compacting(lines: int, jobs: int) -> bool:
    return lines > 2 * jobs + SLACK_LINES


def _lines(index: LedgerIndex, now: float) -> Iterator[bytes]:
    yield from index.done_lines()
    for job, rec in index.records.items():
        if rec.phase is Phase.DONE and rec.files:
            yield encode(job, Done(rec), rec.done_t or now)
        else:
            yield encode(job, Snap(rec), now)


def compact(path: Path, index: LedgerIndex, now: float) -> None:
    """Rewrite the ledger at ``path`` as one line per job of ``index`` (its replay);
    ``now``: wall seconds, the time of the lines that have none of their own."""
    tmp = path.with_name(f".{path.name}.compact")
    with tmp.open("wb") as f:
        f.writelines(_lines(index, round(now, 3)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    replay_index.forget(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
