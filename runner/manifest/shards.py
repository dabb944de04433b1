"""Sharding: which jobs are shard K of N's, and where that shard works.

N processes (a Kubernetes Indexed Job, a Slurm array, N cron lines) each run a
deterministic 1/N of one campaign. A job belongs to shard ``blake2b-64(id) mod N``:
stable across runs, machines and Python versions (never ``hash()``, which is salted per
process), and independent of the job's place in the manifest. Shard K of N works in
``<output.dir>/shards/<K>-of-<N>/`` with its own ledger, lock, images, ``results.jsonl``
and ``summary.json`` (:meth:`runner.manifest.campaign.Campaign.sharded`).

Owns: which shard a job is in, and the shard's folder. Must not know: what the other
layouts of a campaign hold (:mod:`runner.state.layouts`), or what a run adopts from them
(:mod:`runner.run.adopt`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

from runner.errors import ManifestError

__all__ = ["parse_shard_folder", "resolve_shard", "shard_folder", "shard_of"]

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


def parse_shard_folder(name: str) -> tuple[int, int] | None:
    """(K, N) of a shard folder's name (``3-of-8``), or None for any other name."""
    m = _FOLDER.match(name)
    if m is None or int(m[1]) >= int(m[2]):
        return None
    return int(m[1]), int(m[2])
