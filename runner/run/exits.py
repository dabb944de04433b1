"""How a run ends: every exit code of the command line, and which one a run earned.

The codes are the contract (``docs/USAGE.md``). Three are raised as errors from the
tree in :mod:`runner.errors` (their numbers live on the error classes, read here); the
others are decided at the end of a run by :func:`exit_code`, from what the run knows
then (:class:`RunEnd`). :func:`advice` is what the closing line adds for a code, if
anything.

Owns: the codes and the decision. Must not know: how the facts were gathered (the
engine), or how the closing line is printed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from runner.errors import FatalApiError, LockedError, ManifestError
from runner.present.outputs import RunCounters

__all__ = ["ExitCode", "RunEnd", "advice", "exit_code", "uncertain_note", "why_remaining"]


class ExitCode(enum.IntEnum):
    DONE = 0  # every job done, its images on disk
    FAILED = 1  # some jobs failed permanently or were lost (see results.jsonl)
    CONFIG = ManifestError.exit_code  # manifest, option or configuration error; nothing sent
    ACCOUNT = FatalApiError.exit_code  # the API refused the account; state saved
    STOPPED = 4  # stopped early with work remaining: run the same command again
    LOCKED = LockedError.exit_code  # another run holds the output folder
    BUDGET = 6  # the budget cap is reached with work remaining: raise it to go on


@dataclass(frozen=True, slots=True)
class RunEnd:
    """What decides a run's exit code."""

    jobs: int  # of the campaign (or shard)
    ended: int  # done, failed or lost
    failed: int  # failed or lost
    #: the API said the configuration is wrong (a 404 to a submission)
    misconfigured: bool
    #: the API refused the account during the run
    refused: bool
    #: a stop was asked for (signal, deadline, refusal), or tasks outlived
    #: polling.timeout: work remains that running again will do
    stopped: bool
    #: the budget cap kept work from being submitted (a new job, or a retry)
    budget_refused: bool

    @property
    def remaining(self) -> int:
        return self.jobs - self.ended


def exit_code(end: RunEnd) -> ExitCode:
    if end.misconfigured:
        return ExitCode.CONFIG
    if end.refused:
        return ExitCode.ACCOUNT
    if end.budget_refused and not end.stopped:
        return ExitCode.BUDGET  # raise the cap to go on
    if end.remaining:
        return ExitCode.STOPPED
    return ExitCode.FAILED if end.failed else ExitCode.DONE


def advice(code: int, remaining: int) -> str | None:
    """What the closing line adds for ``code``: a warning worth a line of its own."""
    if code == ExitCode.BUDGET:
        return (
            f"the budget cap is reached: {remaining} jobs remain unsubmitted, and running "
            "again changes nothing until budget.max_images or budget.max_cost is raised in "
            "the manifest"
        )
    return None


def why_remaining(counters: RunCounters, stop_reason: str | None) -> list[str]:
    """Why jobs are left for the next run, in the operator's words."""
    c = counters
    reasons = [stop_reason] if stop_reason else []
    for n, why in (
        (c.timed_out, "tasks outlived polling.timeout; they stay live"),
        (c.unknown_tasks, "tasks the API does not know under this key; they stay live"),
        (c.slot_waits_expired, "jobs found no free task slot within retry.slot_wait"),
        (c.not_sent, "submissions could not reach the API"),
        (c.uncertain_gave_up, "jobs stopped at retry.uncertain unanswered submissions"),
        (c.download_parked, "downloads failed for now"),
        (c.changed_in_flight, "edited jobs finished their earlier content first"),
    ):
        if n:
            reasons.append(f"{n} {why}")
    return reasons or ["work left for the next run"]


def uncertain_note(counters: RunCounters) -> str | None:
    """What a run with submissions of unknown outcome says about them."""
    n = counters.uncertain
    if not n:
        return None
    return (
        f"{n} submissions this run had an unknown outcome (the connection broke, a 5xx or a "
        "timeout answered them): each may have been billed, and its job was sent again or "
        "left for the next run; summary.json counts them under uncertain_submissions"
    )
