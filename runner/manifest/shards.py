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
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runner.errors import ManifestError

__all__ = [
    "SPLIT_NAME",
    "Split",
    "id_hash",
    "parse_shard_folder",
    "read_split",
    "record_split",
    "resolve_shard",
    "shard_folder",
    "shard_of",
]

#: the campaign's split, in ``<output.dir>/shards/``
SPLIT_NAME = "split.json"

_SHARD = re.compile(r"^(\d+)/(\d+)$")
_FOLDER = re.compile(r"^(\d+)-of-(\d+)$")


def id_hash(job_id: str) -> int:
    """A job id's 64-bit hash: what places a job in a shard, and the key of a done job
    in the ledger's packed index (:mod:`runner.state.packed`, the same function)."""
    return int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(), "big")


def shard_of(job_id: str, shards: int) -> int:
    return id_hash(job_id) % shards


@dataclass(frozen=True, slots=True)
class Split:
    """How a campaign is split over an array: N shards, array indexes from ``low`` in steps
    of ``step`` (``--array=10-16:2`` is low 10, step 2). Recorded in
    ``<output.dir>/shards/split.json`` by the first sharded run."""

    n: int
    low: int = 0
    step: int = 1

    def index_of(self, task_id: int) -> int | None:
        """The shard of array index ``task_id`` in this split, or None if it has none."""
        k, rest = divmod(task_id - self.low, self.step)
        return k if not rest and 0 <= k < self.n else None


def read_split(out: Path) -> Split | None:
    """The split recorded in ``out``, or None (none yet, or unreadable)."""
    try:
        raw = json.loads((out / "shards" / SPLIT_NAME).read_text())
        return Split(int(raw["n"]), int(raw.get("low", 0)), int(raw.get("step", 1)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_split(out: Path, split: Split) -> None:
    """Record the campaign's split (the first sharded run's, or a new full split)."""
    folder = out / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    # A name of its own: the shards of an array start together and all record the split.
    tmp = folder / f".{SPLIT_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"n": split.n, "low": split.low, "step": split.step}) + "\n")
    os.replace(tmp, folder / SPLIT_NAME)


def resolve_shard(
    shard: str | None,
    shards: int | None,
    env: Mapping[str, str],
    recorded: Split | None = None,
) -> tuple[tuple[int, int], Split] | None:
    """((K, N), the split) from ``--shard K/N``, or ``--shards N`` with K from
    ``JOB_COMPLETION_INDEX`` (Kubernetes) or the Slurm array's variables (contiguous or
    stepped arrays; a listed one is refused); None: no sharding.

    ``recorded`` is the campaign's split so far. An array of fewer tasks than N
    (``sbatch --array=2`` with N written in the script) resubmits some indexes of it, as
    does one with N = 1 (N from ``SLURM_ARRAY_TASK_COUNT``, an older recipe): those
    shards of the recorded split run, with the recorded array's task ids; never a new
    split of the whole campaign. A full array (N tasks) is a split of its own."""
    if shard is not None:
        m = _SHARD.match(shard.strip())
        if not m:
            raise ManifestError("must be K/N, e.g. 0/4 (K counts from 0)", "--shard")
        k, n = int(m[1]), int(m[2])
        if n < 1 or not 0 <= k < n:
            raise ManifestError(f"shard {k}/{n}: need N >= 1 and 0 <= K < N", "--shard")
        return (k, n), Split(n)
    if shards is None:
        return None
    n = shards
    if n < 1:
        raise ManifestError(f"{n}: need N >= 1", "--shards")
    if "JOB_COMPLETION_INDEX" in env:
        k = _int(env, "JOB_COMPLETION_INDEX")
        if not 0 <= k < n:
            raise ManifestError(
                f"JOB_COMPLETION_INDEX gives shard {k}, outside 0..{n - 1}", "--shards"
            )
        return (k, n), Split(n)
    if "SLURM_ARRAY_TASK_ID" not in env:
        raise ManifestError(
            "needs the shard's index: use --shard K/N, or run as a Kubernetes Indexed "
            "Job (JOB_COMPLETION_INDEX) or a Slurm array (SLURM_ARRAY_TASK_ID)",
            "--shards",
        )
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    low = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
    step = _int(env, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in env else 1
    count = _int(env, "SLURM_ARRAY_TASK_COUNT") if "SLURM_ARRAY_TASK_COUNT" in env else None
    high = _int(env, "SLURM_ARRAY_TASK_MAX") if "SLURM_ARRAY_TASK_MAX" in env else None
    regular = step >= 1 and (count is None or high is None or low + (count - 1) * step == high)
    split = Split(n, low, max(step, 1))
    # A partial array (fewer tasks than N: `sbatch --array=2` with N fixed in the script),
    # or N taken from SLURM_ARRAY_TASK_COUNT by an older recipe and one index resubmitted
    # (N = 1): some indexes of the recorded split run again. Their task ids are the
    # recorded array's, whatever this array's own first index is.
    partial = count is not None and count < n
    legacy = recorded is not None and n == 1 < recorded.n
    if recorded is not None and (partial or legacy):
        if recorded.n != n and not legacy:
            raise ManifestError(
                f"this Slurm array has {count} tasks for --shards {n}, but the campaign's "
                f"recorded split is {_describe(recorded)} (in shards/{SPLIT_NAME}): "
                f"resubmit indexes with --shards {recorded.n}, or submit a whole new "
                f"array of {n} tasks",
                "--shards",
            )
        k0 = recorded.index_of(task)
        if k0 is None:
            raise ManifestError(
                f"SLURM_ARRAY_TASK_ID {task} is not an index of the campaign's recorded "
                f"split ({_describe(recorded)}, in shards/{SPLIT_NAME}): resubmit "
                "indexes of that array, or submit a whole new array of N tasks",
                "--shards",
            )
        return (k0, recorded.n), recorded
    if partial:
        # No split recorded: the first index of a partial array says nothing about which
        # shards it holds (--array=2 of 0-3 would read as shard 0).
        raise ManifestError(
            f"this Slurm array has {count} tasks for --shards {n}, and no split is "
            f"recorded yet: submit the whole array first (--array=0-{n - 1}), or use "
            "--shard K/N",
            "--shards",
        )
    if not regular:
        raise ManifestError(
            f"the Slurm array is listed, not a range (indexes {low}..{high}, {count} tasks): "
            "its task ids give no shard index. Use a range, --array=0-N (a step such as "
            "0-12:4 works too), or --shard K/N",
            "--shards",
        )
    index = split.index_of(task)
    if index is None:
        raise ManifestError(
            f"SLURM_ARRAY_TASK_ID {task} gives no shard of {n} (array from {low} in steps "
            f"of {step})",
            "--shards",
        )
    return (index, n), split


def _describe(split: Split) -> str:
    high = split.low + (split.n - 1) * split.step
    step = f":{split.step}" if split.step != 1 else ""
    return f"{split.n} shards, array {split.low}-{high}{step}"


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
