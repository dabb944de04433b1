"""The campaign view: ``campaign-report.html``, ``campaign-results.jsonl``,
``campaign-summary.json`` and ``campaign-metadata.jsonl`` in ``output.dir`` over every
layout folder of a campaign (the unsharded one and every ``shards/K-of-N/``), written by
``--report`` without ``--shard`` when the campaign has been split. Their own names: the
unsharded layout's folder is ``output.dir`` too, and its ``report.html``,
``results.jsonl``, ``summary.json`` and ``metadata.jsonl`` stay that layout's.

Every job counts once, in the furthest state any layout took it to
(:class:`runner.state.layouts.CampaignView`); its images are linked where they are, with
paths relative to ``output.dir`` (``shards/0-of-2/images/…``). Money is what each folder
paid, summed. Jobs the layouts disagree on (done in one and failed in another, in flight
in two) are counted by kind, for a warning and the summary.

Only ``--report`` writes these: a run writes its own folder's files, never the campaign's
(shards ending together would each reread every ledger and race for the same names).

Owns: the campaign-level files and their names. Must not know: how a run works on a
layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from runner.manifest.campaign import Campaign
from runner.state.index import LedgerIndex
from runner.state.layouts import CampaignView

from .dataset import METADATA_NAME
from .outputs import ledger_view, write_campaign_summary, write_results
from .report import REPORT_NAME, write_report

__all__ = [
    "CAMPAIGN_METADATA",
    "CAMPAIGN_PREFIX",
    "CAMPAIGN_REPORT",
    "CAMPAIGN_RESULTS",
    "CAMPAIGN_SUMMARY",
    "ORIGIN",
    "write_campaign_view",
]

#: the campaign view's files in ``output.dir``, beside the unsharded layout's own
CAMPAIGN_PREFIX = "campaign-"
CAMPAIGN_REPORT = CAMPAIGN_PREFIX + REPORT_NAME
CAMPAIGN_RESULTS = CAMPAIGN_PREFIX + "results.jsonl"
CAMPAIGN_SUMMARY = CAMPAIGN_PREFIX + "summary.json"
CAMPAIGN_METADATA = CAMPAIGN_PREFIX + METADATA_NAME
#: where the campaign report says its counts come from
ORIGIN = "the ledgers of every layout of the campaign (this folder and shards/)"


def _last_run(folder: Path, rel: str) -> dict[str, Any]:
    """The exit code and wall time of the last run in ``folder``, from its summary.json
    (one that an older version's campaign view wrote over the unsharded folder's keeps
    that folder's entry)."""
    try:
        summary = orjson.loads((folder / "summary.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(summary, dict):
        return {}
    if summary.get("scope") == "campaign":
        for entry in summary.get("layouts") or []:
            if isinstance(entry, dict) and entry.get("folder") == rel:
                return {k: entry[k] for k in ("exit_code", "wall_time_s") if k in entry}
        return {}
    return {k: summary[k] for k in ("exit_code", "wall_time_s") if k in summary}


def _layouts(view: CampaignView) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    if LedgerIndex.__bool__(view):
        entries.append(
            {
                "layout": "unsharded",
                "folder": ".",
                "ledger_jobs": LedgerIndex.__len__(view),
                "images_paid": LedgerIndex.billed_images(view),
                **_last_run(view.root, "."),
            }
        )
    for layout, index in view.others:
        rel = view.prefix(layout)
        entries.append(
            {
                "layout": str(layout),
                "folder": rel,
                "ledger_jobs": len(index),
                "images_paid": index.billed_images(),
                **_last_run(layout.folder, rel),
            }
        )
    return entries


def write_campaign_view(campaign: Campaign, view: CampaignView) -> tuple[Path, dict[str, int]]:
    """Write the campaign-level files in ``output.dir`` (each atomically) from ``view``;
    return the report's path and the jobs per kind of disagreement between layouts."""
    layouts = _layouts(view)
    write_results(campaign, view, CAMPAIGN_RESULTS)
    picture = ledger_view(campaign, view)
    disagreements = view.disagreements()
    write_campaign_summary(campaign, picture, layouts, disagreements, CAMPAIGN_SUMMARY)
    path = write_report(campaign, view, None, ORIGIN, CAMPAIGN_PREFIX)
    return path, disagreements
