"""Before a run sends anything: what the campaign's other layouts did counts here.

Every layout's folder keeps what it did (:mod:`runner.state.layouts`); no layout may pay
for a job another layout paid for. :func:`adopt_other_layouts`, called once by the engine
holding this folder's lock, with the ledger open:

- refuses (exit 2, nothing sent) a live run in another layout's folder, and a run that
  would submit a job with paid work in flight in another layout (a task not yet finished
  there, or a submission whose answer is unknown), naming the folder and the command that
  drains it. Shards of the run's own N are not other layouts: they run side by side;
- *adopts* a job of the run's share done in another layout (same content, every image
  still on disk there): its ``done`` line is copied into this run's ledger with its file
  paths made relative to this folder (``../../images/...``), so it is never submitted and
  counts as done in the summary, the exit code, ``results.jsonl`` and the report. Done
  there with some images gone: adopted as downloading (fetched again from its URLs into
  this folder, not paid again). Failed there and never tried here: adopted as failed
  (``--retry-failed`` submits it again, as for any failure).

Money stays where it was paid: an adopted job bills nothing in the adopting folder.

Limits (``concurrency``, ``rate``, ``downloads``) are per process: N shards on one API
key must each be given 1/N of the key's limits, or each shard its own key.

Owns: the rules above. Must not know: the network (it reads folders only).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import posixpath
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from runner.errors import ManifestError
from runner.manifest.campaign import Campaign
from runner.manifest.jobspec import Job
from runner.state.events import Done, Snap, Uncertain
from runner.state.index import LedgerIndex
from runner.state.layouts import Layout, other_layouts, own_layout
from runner.state.ledger import Ledger, read_index
from runner.state.lock import held_by
from runner.state.record import IN_FLIGHT, JobRecord, JobState, Phase

__all__ = ["adopt_other_layouts"]

log = logging.getLogger("runner")

#: states in which this run finishes its own work on a job and submits nothing
_WORK_IN_HAND = (JobState.DONE, JobState.LIVE, JobState.DOWNLOADING)


def adopt_other_layouts(campaign: Campaign, ledger: Ledger, retry_failed: bool = False) -> int:
    """Make what every other layout of the campaign did count for this run; return the
    jobs adopted. Call it once, holding this folder's lock (so that of two layouts started
    together at least one sees the other's), with the ledger open, before anything is sent.

    Raises :class:`~runner.errors.ManifestError` (exit 2, nothing sent) when another
    layout's folder is held by a live run, or when a job this run would submit has paid
    work in flight in another layout. Otherwise writes into ``ledger`` each job of the
    run's share that another layout finished and this one has not (see the module's
    docstring). Reads each other ledger once; with no other layout, costs a listdir."""
    others = other_layouts(campaign)
    for layout in others:
        holder = held_by(layout.folder)
        if holder is not None:
            raise ManifestError(
                f"the campaign's {layout} layout is running there right now (lock held "
                f"by: {holder}). Two layouts must not run at once, or both could pay for "
                "the same jobs: wait for that run to end (or stop it), then run this again. "
                "Shards of one split (--shard K/N, one N) may run side by side",
                str(layout.folder),
            )
    indexes: list[tuple[Layout, LedgerIndex]] = []
    try:
        for layout in others:
            index, _ = read_index(layout.folder)
            if index:
                indexes.append((layout, index))
            else:
                index.close()
        if not indexes:
            return 0
        _refuse_in_flight(campaign, ledger.index, indexes, retry_failed)
        return _adopt(campaign, ledger, indexes)
    finally:
        for _, index in indexes:
            index.close()


def _refuse_in_flight(
    campaign: Campaign,
    state: LedgerIndex,
    indexes: list[tuple[Layout, LedgerIndex]],
    retry_failed: bool,
) -> None:
    """Raise if a job this run would submit has paid work in flight in another layout.

    Not adopted: a task can be polled from any folder, but a submission whose answer is
    unknown cannot, and the owning folder's ledger would still call the job in flight, so
    its next run would poll and download it again. Draining it where it was paid for is
    exact, and what the message asks for."""
    own = own_layout(campaign)
    suspects: dict[str, tuple[str, Layout]] = {}  # job -> (content in flight, where)
    for layout, index in indexes:
        for job_id, rec in index.items():
            if rec.phase in IN_FLIGHT and own.owns(job_id) and job_id not in suspects:
                here, mine, _, _ = state.status(job_id, rec.fp)
                if here in _WORK_IN_HAND or (mine is not None and mine.phase is Phase.SUBMITTING):
                    continue  # this run finishes its own work on the job, submits nothing
                if here is JobState.FAILED and not retry_failed:
                    continue
                suspects[job_id] = (rec.fp, layout)
    if not suspects:
        return
    blocked: Counter[Layout] = Counter()
    for job in campaign.jobs():  # only jobs still in the manifest, with that content
        hit = suspects.get(job.id)
        if hit is not None and hit[0] == job.fingerprint:
            found = _ended_elsewhere(job, own, indexes)
            if found is None or found[1].phase is Phase.FAILED:
                blocked[hit[1]] += 1
    if not blocked:
        return
    layout, count = blocked.most_common(1)[0]
    more = sum(blocked.values()) - count
    also = f" ({more} more in {len(blocked) - 1} other layout folders)" if more else ""
    raise ManifestError(
        f"{count} job{'s' if count != 1 else ''} of this run {'have' if count != 1 else 'has'} "
        f"paid work in flight in the campaign's {layout} layout (a task not finished, or "
        f"a submission whose answer is unknown){also}; submitting {'them' if count != 1 else 'it'} "
        "here would pay twice. Run that layout until it drains, e.g. "
        f"`{layout.command(campaign.source)}` with your usual options, then run this "
        "again: what it finishes counts here",
        str(layout.folder),
    )


def _ended_elsewhere(
    job: Job, own: Layout, indexes: list[tuple[Layout, LedgerIndex]]
) -> tuple[Layout, JobRecord] | None:
    """The furthest another layout got with ``job`` at this content, its record's paths
    made relative to ``own``'s folder: done with every image on disk there; else done with
    some images gone but their URLs known (returned as downloading: this run fetches them
    again, free, rather than pay); else failed."""
    best: tuple[Layout, JobRecord] | None = None
    for layout, index in indexes:
        if not layout.owns(job.id):
            continue
        state, rec, _, _ = index.status(job.id, job.fingerprint)
        if state is JobState.DONE:
            rec = index.get(job.id)
            if rec is None:
                continue
            moved = _rebased(rec, layout.folder, own.folder)
            if moved.files and all(
                (own.folder / str(f["path"])).is_file() for f in moved.files.values()
            ):
                return layout, moved
            if moved.urls and (best is None or best[1].phase is Phase.FAILED):
                best = layout, dataclasses.replace(moved, phase=Phase.RESULT)
        elif state is JobState.FAILED and rec is not None and best is None:
            best = layout, rec
    return best


@functools.lru_cache(maxsize=64)
def _relative(src: Path, dst: Path) -> str:
    """``src`` as a path relative to ``dst`` (``../..``, ``shards/0-of-2``)."""
    return Path(os.path.relpath(src, dst)).as_posix()


def _rebased(rec: JobRecord, src: Path, dst: Path) -> JobRecord:
    """``rec`` with its file paths (relative to ``src``) made relative to ``dst``."""
    up = _relative(src, dst)
    files = {
        i: {**f, "path": posixpath.normpath(posixpath.join(up, str(f["path"])))}
        for i, f in rec.files.items()
    }
    return dataclasses.replace(rec, files=files)


def _adopt(campaign: Campaign, ledger: Ledger, indexes: list[tuple[Layout, LedgerIndex]]) -> int:
    own = own_layout(campaign)
    if not any(index.done or _ended(index) for _, index in indexes):
        return 0
    adopted: Counter[Layout] = Counter()
    for job, mine, (layout, rec) in _adoptable(campaign, ledger.index, own, indexes):
        # Money stays where it was paid: this folder bills only what it paid itself.
        whole = dataclasses.replace(
            rec,
            billed=mine.billed if mine is not None else 0,
            billed_task=mine.billed_task if mine is not None else None,
            uncertain_images=mine.uncertain_images if mine is not None else 0,
        )
        if mine is not None and mine.fp == job.fingerprint:
            if mine.phase is Phase.SUBMITTING:  # an answer never seen: abandoned, counted
                ledger.append(job.id, Uncertain(f"ended in {layout.folder}"))
            whole.submits += mine.submits
            whole.uncertain += mine.uncertain
            whole.failed_tasks += mine.failed_tasks
        origin = _relative(layout.folder, own.folder)
        if rec.phase is not Phase.DONE:  # failed, or images to fetch again: a full record
            ledger.append(job.id, Snap(whole, origin))
        elif job.id in ledger.index:
            # The ledger's ``done`` would carry this folder's record: replace it first.
            ledger.append(job.id, Snap(whole, origin))
            ledger.append(job.id, Done(ledger.index.records[job.id], origin), rec.done_t)
        else:
            ledger.append(job.id, Done(whole, origin), rec.done_t)
        adopted[layout] += 1
    for layout, count in adopted.items():
        log.info(
            "%d jobs of this run ended in the campaign's %s layout (%s): adopted, not "
            "submitted again (images on disk there are used where they are)",
            count,
            layout,
            layout.folder,
        )
    return sum(adopted.values())


def _ended(index: LedgerIndex) -> bool:
    return any(rec.phase in (Phase.DONE, Phase.FAILED) for rec in index.values())


def _adoptable(
    campaign: Campaign, state: LedgerIndex, own: Layout, indexes: list[tuple[Layout, LedgerIndex]]
) -> Iterator[tuple[Job, JobRecord | None, tuple[Layout, JobRecord]]]:
    """(job, this ledger's record of it, what to adopt) for every job of the run's share
    that another layout took further than this one: done or paid there beats anything but
    done or work in hand here; failed there counts only for a job never tried here."""
    for job in campaign.jobs():
        here, mine, _, _ = state.status(job.id, job.fingerprint)
        if here in _WORK_IN_HAND:
            continue
        found = _ended_elsewhere(job, own, indexes)
        if found is None:
            continue
        if found[1].phase is not Phase.FAILED or (here is JobState.PENDING and mine is None):
            yield job, mine, found
