"""The layouts of one campaign, and the campaign as all their ledgers see it.

A *layout* is one way of splitting a campaign: unsharded (``output.dir`` itself) or shard
K of N (``<output.dir>/shards/<K>-of-<N>/``, :mod:`runner.manifest.shards`). Every
layout's folder keeps what it did; this module finds the other layouts of a campaign
(:func:`other_layouts`) and reads their ledgers, read-only and without taking their lock:

- :class:`CampaignIndex`, for ``--status`` and ``--dry-run``, counts every job once, in
  its furthest state over every layout that holds it (done, downloading, live, failed,
  pending);
- :class:`CampaignView`, for the campaign-level files ``--report`` writes, is the same
  with records rebased to ``output.dir`` and the jobs layouts disagree on;
- what a run adopts from the others before it sends anything is :mod:`runner.run.adopt`.

Owns: which folders are layouts of a campaign and how far each got with a job. Must not
know: how a run acts on that (adoption, refusals), or the network.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import shlex
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.manifest.campaign import Campaign
from runner.manifest.shards import parse_shard_folder, shard_folder, shard_of

from .index import JobStatus, LedgerIndex
from .ledger import read_index
from .record import JobRecord, JobState

__all__ = [
    "DISAGREEMENTS",
    "CampaignIndex",
    "CampaignView",
    "Layout",
    "other_layouts",
    "own_layout",
    "paid_elsewhere",
]


@dataclass(frozen=True, slots=True)
class Layout:
    """One way of splitting a campaign, and the folder it works in."""

    shard: tuple[int, int] | None  # (K, N); None: unsharded
    folder: Path

    def owns(self, job_id: str) -> bool:
        """The job is part of this layout's share of the campaign."""
        return self.shard is None or shard_of(job_id, self.shard[1]) == self.shard[0]

    def __str__(self) -> str:
        return "unsharded" if self.shard is None else f"shard {self.shard[0]} of {self.shard[1]}"

    def command(self, manifest: Path) -> str:
        """The command that runs this layout."""
        option = "" if self.shard is None else f" --shard {self.shard[0]}/{self.shard[1]}"
        return f"python -m runner {shlex.quote(str(manifest))}{option}"


def own_layout(campaign: Campaign) -> Layout:
    return Layout(campaign.shard, campaign.output.dir)


def other_layouts(campaign: Campaign) -> list[Layout]:
    """Every other layout of the campaign with a folder on disk, unsharded first, then by
    N and K; not the shards of the campaign's own N (they share no job with it). Costs a
    ``listdir`` of ``shards/`` (and a stat of the unsharded folder, for a shard)."""
    own = campaign.shard
    root = campaign.output.dir.parent.parent if own is not None else campaign.output.dir
    found = [Layout(None, root)] if own is not None else []
    try:
        names = os.listdir(root / "shards")
    except (FileNotFoundError, NotADirectoryError):
        names = []
    split: list[tuple[int, int]] = []
    for name in names:
        found_shard = parse_shard_folder(name)
        if found_shard is not None and (own is None or found_shard[1] != own[1]):
            split.append(found_shard)
    found += [Layout(s, shard_folder(root, *s)) for s in sorted(split, key=lambda s: s[::-1])]
    return found


def paid_elsewhere(campaign: Campaign) -> tuple[int, int]:
    """Images billed, and images uncertain submissions may have cost, in the campaign's
    other layout folders (each counts what it paid itself): what a budget cap must add.
    Reads each other ledger once; a listdir when there is none."""
    billed = uncertain = 0
    for layout in other_layouts(campaign):
        index, _ = read_index(layout.folder)
        try:
            billed += index.billed_images()
            uncertain += index.uncertain_images()
        finally:
            index.close()
    return billed, uncertain


class CampaignIndex(LedgerIndex):
    """The campaign as every layout's ledger sees it, for ``--status`` and ``--dry-run``:
    the campaign's own folder (a shard's, with ``--shard``) first, then every other layout
    holding jobs of its share. A job counts once, in its furthest state over them all."""

    def __init__(self, campaign: Campaign) -> None:
        own, report = read_index(campaign.output.dir)
        super().__init__(own.path)
        self.records, self.done = own.records, own.done
        self._packed_billed_extra = own._packed_billed_extra
        self._packed_uncertain_images = own._packed_uncertain_images
        self._whole_campaign = campaign.shard is None
        self.lines = report.lines  # of every ledger read
        self.others: list[tuple[Layout, LedgerIndex]] = []
        for layout in other_layouts(campaign):
            index, report = read_index(layout.folder)
            if index:
                self.others.append((layout, index))
                self.lines += report.lines

    def __len__(self) -> int:
        return super().__len__() + sum(len(index) for _, index in self.others)

    def __bool__(self) -> bool:
        return super().__bool__() or bool(self.others)

    def billed_images(self) -> int:
        """What the API billed: this folder's, and for the whole campaign every layout's
        (each folder counts what it paid; adopted jobs count where they were paid)."""
        others = sum(i.billed_images() for _, i in self.others) if self._whole_campaign else 0
        return super().billed_images() + others

    def uncertain_images(self) -> int:
        others = sum(i.uncertain_images() for _, i in self.others) if self._whole_campaign else 0
        return super().uncertain_images() + others

    def status(self, job: str, fp: str) -> JobStatus:
        best = super().status(job, fp)
        for layout, index in self.others:
            if best.state is JobState.DONE:
                break
            if layout.owns(job):
                seen = index.status(job, fp)
                if seen.state.rank > best.state.rank:
                    best = seen
        return best

    def knows(self, job: str) -> bool:
        return super().knows(job) or any(
            layout.owns(job) and index.knows(job) for layout, index in self.others
        )

    def get(self, job: str) -> JobRecord | None:
        rec = super().get(job)
        for layout, index in self.others:
            if rec is not None:
                break
            if layout.owns(job):
                rec = index.get(job)
        return rec

    def close(self) -> None:
        super().close()
        for _, index in self.others:
            index.close()


#: the kinds of disagreement between layouts :class:`CampaignView` counts, in the words
#: of its warning
DISAGREEMENTS = (
    "done in one layout and failed or lost in another",
    "done in one layout and in flight (live or downloading) in another",
    "in flight (live or downloading) in two layouts or more",
)


class CampaignView(CampaignIndex):
    """The whole campaign (unsharded) as every layout sees it, for the campaign-level
    ``results.jsonl``, ``summary.json`` and ``report.html`` in ``output.dir``: a job counts
    once, in its furthest state; its record is the one of the layout that took it
    furthest, with file paths made relative to ``output.dir`` (``shards/0-of-2/images/…``).

    :meth:`get` reads the record of the layout the last :meth:`status` of that job chose
    (every view calls ``status`` then, for a done job, ``get``). Jobs the layouts disagree
    on are kept by kind in :attr:`disagreeing` (ids only: they are few)."""

    def __init__(self, campaign: Campaign) -> None:
        if campaign.shard is not None:
            raise ValueError("the campaign view is of the whole campaign (no --shard)")
        super().__init__(campaign)
        self.root = campaign.output.dir
        self.disagreeing: dict[str, set[str]] = {kind: set() for kind in DISAGREEMENTS}
        self._last: tuple[str, LedgerIndex, str] | None = None

    def done_rows(
        self, idh: Sequence[int], fp64: Sequence[int], rows: Iterable[int]
    ) -> tuple[int, int, int, array[int]]:
        """None counted here: every job goes through :meth:`status`, which tallies where
        layouts disagree (a job done here may have failed in another)."""
        return 0, 0, 0, array("Q", rows)

    def prefix(self, layout: Layout) -> str:
        """The layout's folder relative to ``output.dir`` ("" for the unsharded one)."""
        rel = Path(os.path.relpath(layout.folder, self.root)).as_posix()
        return "" if rel == "." else rel

    def status(self, job: str, fp: str) -> JobStatus:
        best = LedgerIndex.status(self, job, fp)
        where: LedgerIndex = self
        prefix = ""
        seen = [best.state]
        for layout, index in self.others:
            if layout.owns(job):
                found = index.status(job, fp)
                seen.append(found.state)
                if found.state.rank > best.state.rank:
                    best, where, prefix = found, index, self.prefix(layout)
        self._tally(job, seen)
        self._last = (job, where, prefix)
        if best.record is not None and prefix:
            best = best._replace(record=_rebased(best.record, prefix))
        return best

    def get(self, job: str) -> JobRecord | None:
        if self._last is not None and self._last[0] == job:
            _, where, prefix = self._last
            rec = LedgerIndex.get(where, job) if where is self else where.get(job)
            return _rebased(rec, prefix) if rec is not None and prefix else rec
        rec = LedgerIndex.get(self, job)
        if rec is not None:
            return rec
        for layout, index in self.others:
            if layout.owns(job):
                rec = index.get(job)
                if rec is not None:
                    prefix = self.prefix(layout)
                    return _rebased(rec, prefix) if prefix else rec
        return None

    def _tally(self, job: str, seen: list[JobState]) -> None:
        done = JobState.DONE in seen
        flying = sum(s in (JobState.LIVE, JobState.DOWNLOADING) for s in seen)
        if done and (JobState.FAILED in seen or JobState.LOST in seen):
            self.disagreeing[DISAGREEMENTS[0]].add(job)
        if done and flying:
            self.disagreeing[DISAGREEMENTS[1]].add(job)
        if flying >= 2:
            self.disagreeing[DISAGREEMENTS[2]].add(job)

    def disagreements(self) -> dict[str, int]:
        """Jobs per kind of disagreement met so far (kinds with none left out)."""
        return {kind: len(ids) for kind, ids in self.disagreeing.items() if ids}


def _rebased(rec: JobRecord, prefix: str) -> JobRecord:
    """``rec`` with its file paths (relative to its layout's folder) prefixed by the
    folder's path relative to ``output.dir``: ``../../images/x`` of an adopted job comes
    back to ``images/x``."""
    files = {
        i: {**f, "path": posixpath.normpath(posixpath.join(prefix, str(f.get("path") or "")))}
        for i, f in rec.files.items()
    }
    return dataclasses.replace(rec, files=files)
