"""The ledger: an append-only JSONL event log, the source of truth for resume.

One writer per output folder (enforced by :class:`runner.state.lock.FolderLock`):
:class:`Ledger`. Each line is one event (:mod:`runner.state.events`); every event is
applied to the index (:mod:`runner.state.index`) by the same method that replays the
file, so what a resumed run believes is exactly what the previous run wrote.
:func:`read_index` replays a folder's ledger without writing (``--status``, the report,
other layouts' folders).

Durability: each line is handed to the kernel with one ``os.write`` on an ``O_APPEND``
descriptor before the call returns, so a SIGKILL at any later moment cannot lose it;
``fsync`` runs at most once a second (and on close) to bound loss on power failure.
A torn last line (a kill mid-write) is ignored and cut off before appending; a corrupt
line elsewhere is skipped and counted. A ledger that holds far more history than state
is compacted when opened (:mod:`runner.state.compaction`).

Owns: the file. Must not know: what events mean (the index), the manifest, the network.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from runner.clock import SYSTEM_CLOCK, Clock

from . import replay_index
from .compaction import compact, worth_compacting
from .events import Done, Event, Snap, decode, encode
from .index import LedgerIndex

__all__ = ["LEDGER_NAME", "Ledger", "ReplayReport", "read_index"]

LEDGER_NAME = "ledger.jsonl"


@dataclass(slots=True)
class ReplayReport:
    lines: int = 0
    corrupt: int = 0  # unreadable lines skipped (not counting a torn tail)
    torn_tail: bool = False
    good_bytes: int = 0  # length of the file up to the last complete line


def _replay(path: Path, index: LedgerIndex) -> ReplayReport:
    """Replay the ledger into the empty ``index``: from the state the start-up index kept
    for this file, if one fits it (:mod:`runner.state.replay_index`), and on to its end;
    then keep the state reached there, unless the next run is to compact the file."""
    report = ReplayReport()
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return report
    with f:
        since, report.lines, report.corrupt = replay_index.resume(f, index)
        offset = report.good_bytes = since
        f.seek(since)
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
                if index.apply_done(ev, start):  # a done line, taken as apply would
                    continue
                decoded = decode(ev)
                if decoded is not None:
                    index.apply(decoded, start)
            else:
                report.corrupt += 1
        if not worth_compacting(report.lines, len(index)):
            replay_index.keep(f, index, report.good_bytes, report.lines, report.corrupt, since)
    return report


def read_index(folder: Path) -> tuple[LedgerIndex, ReplayReport]:
    """Replay a folder's ledger without locking or writing (for --status, --dry-run)."""
    index = LedgerIndex(folder / LEDGER_NAME)
    report = _replay(folder / LEDGER_NAME, index)
    return index, report


class Ledger:
    """The single writer of ``ledger.jsonl``; ``index`` is what it knows, job by job."""

    FSYNC_EVERY_S = 1.0

    def __init__(self, folder: Path, clock: Clock = SYSTEM_CLOCK) -> None:
        self.folder = folder
        self.path = folder / LEDGER_NAME
        self.clock = clock
        self.index = LedgerIndex(self.path)
        self.report = ReplayReport()
        self._size = 0
        self._fd: int | None = None
        self._dirty = False
        self._synced_at = 0.0

    def open(self) -> None:
        """Replay the file, compact it if worth it, cut a torn tail, and open it for
        appending."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.report = _replay(self.path, self.index)
        if worth_compacting(self.report.lines, len(self.index)):
            compact(self.path, self.index, self.clock.wall())
            self.index.close()
            self.index = LedgerIndex(self.path)
            first, self.report = self.report, _replay(self.path, self.index)
            self.report.torn_tail, self.report.corrupt = first.torn_tail, first.corrupt
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.report.torn_tail:
            os.ftruncate(fd, self.report.good_bytes)
        self._size = os.fstat(fd).st_size
        self._fd = fd

    def recent_timings(self, tail_bytes: int = 4 << 20) -> list[tuple[str, int, int]]:
        """``(job, create_ms, complete_ms)`` of the tasks that the last ``tail_bytes`` of
        the ledger say succeeded (the API's own timings), each task once (its timings stand
        on more than one line), oldest first: what a run learns completion times from
        before its own tasks finish. Unreadable lines are skipped."""
        try:
            with self.path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - tail_bytes))
                data = f.read()
        except OSError:
            return []
        lines = data.split(b"\n")
        if size > tail_bytes:
            lines = lines[1:]  # the first is cut
        out: dict[tuple[str, int], int] = {}
        for line in lines:
            if b'"complete_ms"' not in line:
                continue
            try:
                raw = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            job, created, completed = raw.get("job"), raw.get("create_ms"), raw.get("complete_ms")
            if isinstance(job, str) and type(created) is int and type(completed) is int:
                out.setdefault((job, created), completed)
        return [(job, created, completed) for (job, created), completed in out.items()]

    def append(self, job: str, event: Event, t: float | None = None) -> None:
        """Write one event durably (against a kill) and apply it to the index. ``t``:
        the line's time, now when not given."""
        t = round(self.clock.wall(), 3) if t is None else t
        line = encode(job, event, t)
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
        if isinstance(event, Done | Snap):
            # A whole record is applied as replay will read it back from the line.
            applied = decode(orjson.loads(line))
            assert applied is not None
        else:
            applied = (job, t, event)
        self.index.apply(applied, offset)

    def sync(self, force: bool = False) -> None:
        """fsync if there is anything new and the last one is old enough (or forced)."""
        now = self.clock.monotonic()
        if self._fd is not None and self._dirty and (force or now - self._synced_at >= 1.0):
            os.fsync(self._fd)
            self._dirty = False
            self._synced_at = now

    def close(self) -> None:
        if self._fd is not None:
            self.sync(force=True)
            os.close(self._fd)
            self._fd = None
        self.index.close()
