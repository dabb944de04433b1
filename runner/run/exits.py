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

__all__ = ["ExitCode", "RunEnd", "advice", "exit_code"]


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
    #: the API refused the account during the run
    refused: bool
    #: a stop was asked for (signal, deadline, refusal), or tasks outlived
    #: polling.timeout: work remains that running again will do
    stopped: bool
    #: submissions ended because the next job no longer fitted the budget cap
    budget_reached: bool

    @property
    def remaining(self) -> int:
        return self.jobs - self.ended


def exit_code(end: RunEnd) -> ExitCode:
    if end.refused:
        return ExitCode.ACCOUNT
    if end.remaining:
        return ExitCode.BUDGET if end.budget_reached and not end.stopped else ExitCode.STOPPED
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
