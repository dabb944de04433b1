"""One job as the ledger knows it, and the one vocabulary of job states.

:class:`Phase` is where a job stands in its life, as replay of the ledger's events leaves
it (:mod:`runner.state.index`); :class:`JobState` is what every view of a campaign calls
it: ``--status`` and ``--dry-run``, ``results.jsonl``, ``summary.json`` and the report.
Each phase has exactly one state (:attr:`Phase.state`); a job the ledger knows nothing
of, or knows only under other content, is ``pending``.

Owns: these words and :class:`JobRecord`. Must not know: the line format
(:mod:`runner.state.events`), the manifest, the network.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IN_FLIGHT", "JobRecord", "JobState", "Phase"]


class JobState(enum.StrEnum):
    """A job's state in every view. A ``str``: it compares, hashes and prints as its
    value, so ``counts["done"]`` and ``counts[JobState.DONE]`` are the same entry."""

    PENDING = "pending"  # nothing in hand: it will be submitted (again)
    LIVE = "live"  # its task is alive on the API
    DOWNLOADING = "downloading"  # its task succeeded; images still to fetch
    DONE = "done"  # every image on disk
    FAILED = "failed"  # ended without images
    LOST = "lost"  # paid, but its images are gone for good

    @property
    def ended(self) -> bool:
        """Done, failed or lost: a run has nothing more to do for it (unless asked to
        retry)."""
        return self in (JobState.DONE, JobState.FAILED, JobState.LOST)

    @property
    def rank(self) -> int:
        """How far a job got: to pick one state for it among several ledgers."""
        return _RANK[self]


_RANK = {
    JobState.PENDING: 0,
    JobState.FAILED: 1,
    JobState.LOST: 1,
    JobState.LIVE: 2,
    JobState.DOWNLOADING: 3,
    JobState.DONE: 4,
}


class Phase(enum.Enum):
    """Where a job stands, as the ledger's events leave it."""

    NEW = "new"  # nothing in flight: submit when due
    SUBMITTING = "submitting"  # intent written, outcome not yet known
    LIVE = "live"  # a task exists on the API
    RESULT = "result"  # the task succeeded; images still to download
    DONE = "done"
    FAILED = "failed"
    LOST = "lost"  # paid images gone for good: submitted again only after a reset

    @property
    def state(self) -> JobState:
        """What the views call a job in this phase."""
        return _STATE_OF[self]


_STATE_OF = {
    Phase.NEW: JobState.PENDING,
    Phase.SUBMITTING: JobState.PENDING,
    Phase.LIVE: JobState.LIVE,
    Phase.RESULT: JobState.DOWNLOADING,
    Phase.DONE: JobState.DONE,
    Phase.FAILED: JobState.FAILED,
    Phase.LOST: JobState.LOST,
}

#: phases of paid work not yet finished: a submission's answer unknown, a task on the API,
#: a finished task's images not yet all on disk
IN_FLIGHT = (Phase.SUBMITTING, Phase.LIVE, Phase.RESULT)


@dataclass(slots=True)
class JobRecord:
    """What the ledger knows of one job id."""

    fp: str
    phase: Phase = Phase.NEW
    task_id: str | None = None
    max_images: int = 1  # of the content last submitted
    submits: int = 0  # submissions sent (all attempts, all runs)
    failed_tasks: int = 0  # tasks that ended failed with a retryable code
    uncertain: int = 0
    urls: tuple[str, ...] = ()
    #: image index -> {"path" (relative to the folder), "bytes", "sha256"}
    files: dict[int, dict[str, Any]] = field(default_factory=dict)
    fail_code: str | None = None
    fail_msg: str | None = None
    retryable: bool = False
    submitted_t: float | None = None  # unix seconds of the live task's submission
    create_ms: int | None = None
    complete_ms: int | None = None
    cost_ms: int | None = None
    done_t: float | None = None
    #: images the API billed for this id: every task that succeeded, in any run and under
    #: any content (an edited job paid for its earlier version too)
    billed: int = 0
    billed_task: str | None = None  # the last task counted in ``billed``
    #: images that submissions of unknown outcome may have been billed, at most
    uncertain_images: int = 0

    @property
    def state(self) -> JobState:
        return self.phase.state
