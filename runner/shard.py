"""Sharding: N processes (a Kubernetes Indexed Job, a Slurm array, N cron lines) each run
a deterministic 1/N of one campaign; and the layouts of one campaign, which never pay twice.

A job belongs to shard ``blake2b-64(id) mod N``: stable across runs, machines and Python
versions (never ``hash()``, which is salted per process), and independent of the job's
place in the manifest. Shard K of N works in ``<output.dir>/shards/<K>-of-<N>/`` with its
own ledger, lock, images, ``results.jsonl`` and ``summary.json``.

A *layout* is one way of splitting the campaign: unsharded (``output.dir`` itself) or
shard K of N. Every layout's folder keeps what it did, and every run reads the others'
(read-only, never taking their lock):

- before anything is sent (:func:`adopt_other_layouts`, called once by the engine): a
  live run in another layout's folder is refused (exit 2); so is a run that would submit a
  job with paid work in flight in another layout (a task not yet finished there, or a
  submission whose answer is unknown), naming the folder and the command that drains it.
  Shards of the run's own N are not other layouts: they run side by side;
- a job of the run's share done in another layout (same content, every image still on
  disk there) is *adopted*: its ``done`` line is copied into this run's ledger with its
  file paths made relative to this folder (``../../images/...``), so it is never
  submitted and counts as done in the summary, the exit code, ``results.jsonl`` and the
  report. Done there with some images gone: adopted as downloading (fetched again from
  its URLs into this folder, not paid again). Failed there and never tried here: adopted
  as failed (``--retry-failed`` submits it again, as for any failure);
- ``--status`` and ``--dry-run`` (:class:`CampaignIndex`) count every job once, in its
  furthest state over every layout that holds it (done, downloading, live, failed, pending).

Limits (``concurrency``, ``rate``, ``downloads``) are per process: N shards on one API
key must each be given 1/N of the key's limits, or each shard its own key (``api.key_env``
naming a per-shard variable).
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import logging
import os
import posixpath
import re
import shlex
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ManifestError
from .ledger import JobRecord, Ledger, LedgerIndex, Phase, full_done, read_index
from .lock import LOCK_NAME
from .manifest import Campaign, Job
from .snapshot import snap_fields

__all__ = [
    "CampaignIndex",
    "Layout",
    "adopt_other_layouts",
    "resolve_shard",
    "shard_campaign",
    "shard_of",
]

log = logging.getLogger("runner")

_SHARD = re.compile(r"^(\d+)/(\d+)$")
_FOLDER = re.compile(r"^(\d+)-of-(\d+)$")


def shard_of(job_id: str, shards: int) -> int:
    digest = hashlib.blake2b(job_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def resolve_shard(
    shard: str | None, shards: int | None, env: Mapping[str, str]
) -> tuple[int, int] | None:
    """(K, N) from ``--shard K/N``, or ``--shards N`` with K from ``JOB_COMPLETION_INDEX``
    (Kubernetes) or ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` (Slurm); None: no
    sharding."""
    if shard is not None:
        m = _SHARD.match(shard.strip())
        if not m:
            raise ManifestError("must be K/N, e.g. 0/4 (K counts from 0)", "--shard")
        k, n = int(m[1]), int(m[2])
    elif shards is not None:
        n = shards
        if "JOB_COMPLETION_INDEX" in env:
            k, source = _int(env, "JOB_COMPLETION_INDEX"), "JOB_COMPLETION_INDEX"
        elif "SLURM_ARRAY_TASK_ID" in env:
            low = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
            k, source = _int(env, "SLURM_ARRAY_TASK_ID") - low, "SLURM_ARRAY_TASK_ID"
        else:
            raise ManifestError(
                "needs the shard's index: use --shard K/N, or run as a Kubernetes Indexed "
                "Job (JOB_COMPLETION_INDEX) or a Slurm array (SLURM_ARRAY_TASK_ID)",
                "--shards",
            )
        if not 0 <= k < n:
            raise ManifestError(f"{source} gives shard {k}, outside 0..{n - 1}", "--shards")
    else:
        return None
    if n < 1 or not 0 <= k < n:
        raise ManifestError(f"shard {k}/{n}: need N >= 1 and 0 <= K < N", "--shard")
    return k, n


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ManifestError(f"{env[name]!r} is not a whole number", name) from None


def shard_folder(out: Path, k: int, n: int) -> Path:
    return out / "shards" / f"{k}-of-{n}"


def shard_campaign(campaign: Campaign, k: int, n: int) -> Campaign:
    """The campaign as shard K of N sees it: its jobs only, its own folder."""
    jobs = images = 0
    for job in campaign.jobs():
        if shard_of(job.id, n) == k:
            jobs += 1
            images += job.max_images
    output = dataclasses.replace(campaign.output, dir=shard_folder(campaign.output.dir, k, n))
    return dataclasses.replace(
        campaign, output=output, job_count=jobs, image_count=images, shard=(k, n)
    )


# -- layouts ------------------------------------------------------------------------------

#: phases of paid work not yet finished: a submission's answer unknown, a task on the API,
#: a finished task's images not yet all on disk
IN_FLIGHT = (Phase.SUBMITTING, Phase.LIVE, Phase.RESULT)

#: how far a job got, to pick one state for it over several layouts
_RANK = {"pending": 0, "failed": 1, "lost": 1, "live": 2, "downloading": 3, "done": 4}


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
        m = _FOLDER.match(name)
        if m and int(m[1]) < int(m[2]) and (own is None or int(m[2]) != own[1]):
            split.append((int(m[1]), int(m[2])))
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


def _lock_holder(folder: Path) -> str | None:
    """What the lock file says of the live run holding ``folder``, or None when no run
    holds it. A shared, non-blocking ``flock`` probe, released at once: it writes
    nothing, and only a run starting in that very folder at that instant could notice it
    (and would exit 5)."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        said = os.read(fd, 200).decode(errors="replace").split()
        return " ".join(said) or "a process"
    finally:
        os.close(fd)  # and with it the probe's lock
    return None


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

    def status(self, job: str, fp: str) -> tuple[str, JobRecord | None, int, int]:
        best = super().status(job, fp)
        for layout, index in self.others:
            if best[0] == "done":
                break
            if layout.owns(job):
                seen = index.status(job, fp)
                if _RANK[seen[0]] > _RANK[best[0]]:
                    best = seen
        return best

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
        holder = _lock_holder(layout.folder)
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
        _refuse_in_flight(campaign, ledger.state, indexes, retry_failed)
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
                if here in ("done", "live", "downloading") or (
                    mine is not None and mine.phase is Phase.SUBMITTING
                ):
                    continue  # this run finishes its own work on the job, submits nothing
                if here == "failed" and not retry_failed:
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
        if state == "done":
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
        elif state == "failed" and rec is not None and best is None:
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
    for job, mine, (layout, rec) in _adoptable(campaign, ledger.state, own, indexes):
        fields = full_done(job.id, rec, 0.0)
        # Money stays where it was paid: this folder bills only what it paid itself.
        fields["billed"] = mine.billed if mine is not None else 0
        fields["bt"] = mine.billed_task if mine is not None else None
        fields["unc_imgs"] = mine.uncertain_images if mine is not None else 0
        if mine is not None and mine.fp == job.fingerprint:
            if mine.phase is Phase.SUBMITTING:  # an answer never seen: abandoned, counted
                ledger.append("uncertain", job.id, why=f"ended in {layout.folder}")
            fields["submits"] += mine.submits
            fields["unc"] += mine.uncertain
            fields["ft"] += mine.failed_tasks
        fields["from"] = _relative(layout.folder, own.folder)
        if rec.phase is not Phase.DONE:  # failed, or images to fetch again: a full record
            ledger.append("snap", job.id, **fields, **snap_fields(rec))
        elif job.id in ledger.state:
            # The ledger's ``done`` would carry this folder's record: replace it first.
            ledger.append("snap", job.id, **fields, **snap_fields(rec))
            ledger.append("done", job.id, **_when(rec), **{"from": fields["from"]})
        else:
            ledger.append("done", job.id, **_when(rec), **fields)
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


def _when(rec: JobRecord) -> dict[str, float]:
    """A ``done`` line's time: when the job ended there (as compaction keeps it)."""
    return {"t": rec.done_t} if rec.done_t is not None else {}


def _adoptable(
    campaign: Campaign, state: LedgerIndex, own: Layout, indexes: list[tuple[Layout, LedgerIndex]]
) -> Iterator[tuple[Job, JobRecord | None, tuple[Layout, JobRecord]]]:
    """(job, this ledger's record of it, what to adopt) for every job of the run's share
    that another layout took further than this one: done or paid there beats anything but
    done or work in hand here; failed there counts only for a job never tried here."""
    for job in campaign.jobs():
        here, mine, _, _ = state.status(job.id, job.fingerprint)
        if here in ("done", "live", "downloading"):
            continue
        found = _ended_elsewhere(job, own, indexes)
        if found is None:
            continue
        if found[1].phase is not Phase.FAILED or (here == "pending" and mine is None):
            yield job, mine, found
