"""The closing line of a run: one record that says how it ended, shown even with
``--quiet`` (the ``runner.final`` logger), carrying the whole summary as JSON under
``--log-format json``.

Owns: the wording of that line. Must not know: how the numbers were gathered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .report import REPORT_NAME

__all__ = ["FINAL_LOGGER", "log_closing"]

#: the closing line's logger: kept at INFO by the console even with --quiet
FINAL_LOGGER = "runner.final"

final_log = logging.getLogger(FINAL_LOGGER)


def log_closing(summary: Mapping[str, Any] | None, code: int, out: Path) -> None:
    """Log the closing line of a run that ended with ``code``; ``summary``: what it
    wrote to ``summary.json`` (None for a run cancelled before it could write one)."""
    if summary is None:
        final_log.info("finished with exit code %d", code)
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
