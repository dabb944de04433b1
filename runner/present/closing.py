"""The closing line of a run: the last record it logs, saying how it ended, shown even
with ``--quiet`` (the ``runner.final`` logger), carrying the whole summary as JSON under
``--log-format json``. Every run ends with one, also one that ended early (exit 2, 4, 5).

Owns: the wording of that line. Must not know: how the numbers were gathered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .report import REPORT_NAME

__all__ = ["FINAL_LOGGER", "log_closing", "log_ended_early"]

#: the closing line's logger: kept at INFO by the console even with --quiet
FINAL_LOGGER = "runner.final"

final_log = logging.getLogger(FINAL_LOGGER)


def log_closing(summary: Mapping[str, Any] | None, code: int, out: Path) -> None:
    """Log the closing line of a run that ended with ``code``; ``summary``: what it
    wrote to ``summary.json`` (None for a run cancelled before it could write one)."""
    if summary is None:  # stopped at once (a second signal): no summary was written
        final_log.info(
            "finished with exit code %d: stopped at once, summary.json not rewritten; "
            "--status shows where the ledger stands; run again to continue",
            code,
        )
        return
    jobs, run = summary.get("jobs", {}), summary.get("run", {})
    api = sum(n for kind, n in summary.get("requests", {}).items() if kind != "file")
    uncertain = summary.get("uncertain_submissions", {})
    final_log.info(
        "finished with exit code %d: %d done, %d failed, %d lost, %d remaining of %d jobs; "
        "%d images on disk; paid %d images, $%.2f; %d uncertain submissions this run; "
        "%d API requests, %d answered 429; %.1f s; summary.json, %s in %s",
        code,
        jobs.get("done", 0),
        jobs.get("failed", 0),
        jobs.get("lost", 0),
        run.get("remaining", 0),
        jobs.get("total", 0),
        summary.get("images", 0),
        summary.get("images_paid", 0),
        summary.get("estimated_spend_usd", 0.0),
        uncertain.get("this_run", 0),
        api,
        summary.get("throttled_429", 0),
        summary.get("wall_time_s", 0.0),
        REPORT_NAME,
        out,
        extra={"summary": dict(summary)},
    )


#: what the closing line of a run that ended before its end says, by exit code
_ENDED_EARLY = {
    2: "nothing was sent; fix what the message above says",
    4: "everything done so far is in the ledger; run again to continue",
    5: "nothing was sent",
}


def log_ended_early(code: int, said: str | None = None) -> None:
    """The closing line of a run that ended with an error before writing its summary
    (``said``: what it says instead of the code's usual words)."""
    said = said or _ENDED_EARLY.get(code, "see above")
    final_log.info("finished with exit code %d: %s", code, said)
