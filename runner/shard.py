"""Sharding: N processes (a Kubernetes Indexed Job, a Slurm array, N cron lines) each run
a deterministic 1/N of one campaign.

A job belongs to shard ``blake2b-64(id) mod N``: stable across runs, machines and Python
versions (never ``hash()``, which is salted per process), and independent of the job's
place in the manifest. Shard K of N works in ``<output.dir>/shards/<K>-of-<N>/`` with its
own ledger, lock, images, ``results.jsonl`` and ``summary.json``; ``--status`` and
``--dry-run`` without ``--shard`` read every shard folder found there.

Limits (``concurrency``, ``rate``, ``downloads``) are per process: N shards on one API
key must each be given 1/N of the key's limits, or each shard its own key (``api.key_env``
naming a per-shard variable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

from .errors import ManifestError
from .ledger import JobRecord, LedgerIndex, read_index
from .manifest import Campaign

__all__ = ["ShardedIndex", "resolve_shard", "shard_campaign", "shard_of"]

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


class ShardedIndex(LedgerIndex):
    """The campaign folder's own ledger plus every shard folder's, answering for a job
    from the ledger of the shard it belongs to (or the folder's own, run unsharded)."""

    def __init__(self, out: Path) -> None:
        own, report = read_index(out)
        super().__init__(own.path)
        self.records, self.done = own.records, own.done
        self.shards: dict[tuple[int, int], LedgerIndex] = {}
        self.lines = report.lines  # of every ledger read
        root = out / "shards"
        for folder in sorted(root.iterdir()) if root.is_dir() else ():
            m = _FOLDER.match(folder.name)
            if m and int(m[1]) < int(m[2]):
                index, report = read_index(folder)
                self.shards[int(m[1]), int(m[2])] = index
                self.lines += report.lines

    def __len__(self) -> int:
        return super().__len__() + sum(len(index) for index in self.shards.values())

    def __bool__(self) -> bool:
        return super().__bool__() or any(self.shards.values())

    def _owner(self, job: str) -> LedgerIndex | None:
        for (k, n), index in self.shards.items():
            if shard_of(job, n) == k and job in index:
                return index
        return None

    def status(self, job: str, fp: str) -> tuple[str, JobRecord | None, int, int]:
        owner = self._owner(job)
        return owner.status(job, fp) if owner else super().status(job, fp)

    def get(self, job: str) -> JobRecord | None:
        owner = self._owner(job)
        return owner.get(job) if owner else super().get(job)
