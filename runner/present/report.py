"""``report.html``: the campaign as one static page in the output folder.

Rewritten whole (temporary name, then rename) at the end of every run and by
``python -m runner MANIFEST --report``, from the ledger and the manifest. From top to
bottom:

- the counts, each a link to the jobs it counts (states are the words of ``--status``:
  pending, live, downloading, done, failed, lost);
- problems first: failures grouped by code (count, one message, links to the jobs),
  lost jobs, jobs with uncertain submissions;
- two charts split by resolution (completion times; images finished per minute);
- the gallery: one row per manifest entry, its matrix variants side by side; a thumbnail
  per image (the full file only in the lightbox, with the job's parameters); a
  placeholder for a job without images (failed, lost, not done yet); filters by state,
  failure code, resolution, aspect ratio and any ``meta`` key, search in prompts, ids and
  meta values, sort by submission time, paging.

It opens offline in any browser, from the output folder or a copy of it: inline CSS and
script (:mod:`runner.report_page`), relative links, no external asset. The jobs are
embedded as JSON and the script renders one page of rows at a time, so a page of tens
of thousands of jobs opens at once. Prompts, meta and API messages are untrusted: the
server-side parts go through :func:`html.escape`, the JSON cannot close its ``<script>``
element, and the script escapes whatever it renders.

Size: the counts, problems and charts cover every job; the gallery holds the first
:data:`GALLERY_JOBS` jobs (manifest order) and, on top of those, up to
:data:`FAILURE_ROWS` failed, lost or uncertain jobs wherever they are; a note says when
jobs were left out, and ``results.jsonl`` lists everything.

:func:`write_report` also rewrites ``metadata.jsonl`` (:mod:`runner.dataset`) in the same
pass over the ledger, and makes the missing thumbnails (:mod:`runner.thumbs`) of the
images the page shows, for at most :data:`THUMB_BUDGET_S` seconds.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runner.manifest.campaign import Campaign
from runner.state.index import LedgerIndex

from . import report_data
from .charts import NARROW, WIDE, completion_histogram, throughput_chart
from .dataset import METADATA_NAME, MetadataWriter
from .outputs import write_atomic
from .report_data import FAILURE_ROWS, GALLERY_JOBS, Collected, Problem, collect, data_json
from .report_page import CSS, SCRIPT
from .thumbs import make_thumbnails, thumb_path

__all__ = [
    "FAILURE_ROWS",
    "GALLERY_JOBS",
    "REPORT_NAME",
    "THUMB_BUDGET_S",
    "build_report",
    "write_report",
]

REPORT_NAME = "report.html"
#: where the page says its counts come from, unless told otherwise
ORIGIN = "the ledger in this folder"
#: seconds one report may spend making thumbnails; the rest wait for the next one
THUMB_BUDGET_S = 30.0


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _stat(label: str, value: str, link: str, bad: bool = False) -> str:
    cls = "stat bad" if bad else "stat"
    return f'<a class="{cls}" href="{_e(link)}"><b>{_e(value)}</b>{_e(label)}</a>'


def _stats(c: Collected, price: float) -> str:
    jobs = sum(c.states.values())
    cards = [
        _stat("jobs", f"{jobs:,}", "#"),
        _stat("done", f"{c.states.get('done', 0):,}", "#state=done"),
        _stat("failed", f"{c.states.get('failed', 0):,}", "#state=failed", c.states["failed"] > 0),
        _stat("lost", f"{c.states.get('lost', 0):,}", "#state=lost", c.states["lost"] > 0),
        _stat("pending", f"{c.states.get('pending', 0):,}", "#state=pending"),
    ]
    for state in ("live", "downloading"):
        if c.states.get(state):
            cards.append(_stat(state, f"{c.states[state]:,}", f"#state={state}"))
    if c.uncertain.count:
        cards.append(_stat("uncertain", f"{c.uncertain.count:,}", "#state=uncertain", bad=True))
    cards.append(_stat("images", f"{c.images:,}", "#state=done"))
    cards.append(_stat(f"images at ${price}", f"${c.images * price:,.2f}", "#state=done"))
    return f"<nav class='stats' aria-label='counts'>{''.join(cards)}</nav>"


def _job_links(p: Problem, filter_link: str, shown: set[str]) -> str:
    links = [
        f'<a href="#job={_e(job_id)}">{_e(job_id)}</a>' if job_id in shown else _e(job_id)
        for job_id in p.ids
    ]
    if p.count > len(p.ids):
        links.append(f'<a href="{_e(filter_link)}">all {p.count:,}</a>')
    return " ".join(links)


def _problems(c: Collected, shown: set[str]) -> str:
    lines = []
    for kind, state, table in (("failed", "failed", c.failures), ("lost", "lost", c.lost)):
        for code, p in sorted(table.items(), key=lambda kv: -kv[1].count):
            link = f"#state={state}&code={code}"
            lines.append(
                f'<tr><td><a href="{_e(link)}"><b>{_e(code)}</b></a><br>{p.count:,} job'
                f"{'s' if p.count != 1 else ''} {kind}</td><td>{_e(p.message)}</td>"
                f'<td class="ids">{_job_links(p, link, shown)}</td></tr>'
            )
    if c.uncertain.count:
        p = c.uncertain
        lines.append(
            f'<tr><td><a href="#state=uncertain"><b>uncertain</b></a><br>{p.count:,} job'
            f"{'s' if p.count != 1 else ''}</td><td>{c.uncertain_submissions:,} submission"
            f"{'s' if c.uncertain_submissions != 1 else ''} whose outcome could not be known "
            "(a task may exist and be billed)</td>"
            f'<td class="ids">{_job_links(p, "#state=uncertain", shown)}</td></tr>'
        )
    if not lines:
        return (
            "<p class='ok'>No problems: no job failed, none was lost, "
            "no submission is uncertain.</p>"
        )
    return (
        "<section class='problems' id='problems'><h2>Problems</h2><table>"
        "<tr><th>code</th><th>message (one of them)</th><th>jobs</th></tr>"
        f"{''.join(lines)}</table></section>"
    )


def _charts(c: Collected) -> str:
    completion = {k: list(v) for k, v in c.completion_s.items()}
    finished = {k: list(zip(c.finished_t[k], c.finished_n[k], strict=True)) for k in c.finished_t}
    times = sorted(t for v in completion.values() for t in v)
    quantiles = ""
    if times:
        p50, p90 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.9))]
        quantiles = f" (median {p50:.2f} s, 90th percentile {p90:.2f} s)"

    def both(svg_id: str, draw: Callable[..., str], data: Any) -> str:
        wide = draw(svg_id, data, WIDE).replace('class="chart"', 'class="chart wide"', 1)
        narrow = draw(f"{svg_id}-narrow", data, NARROW).replace(
            'class="chart"', 'class="chart narrow"', 1
        )
        return wide + narrow

    return (
        "<h2>Charts</h2><div class='charts'>"
        f"<figure><figcaption>Completion times{_e(quantiles)}</figcaption>"
        f"{both('chart-completion', completion_histogram, completion)}</figure>"
        "<figure><figcaption>Images finished per minute</figcaption>"
        f"{both('chart-throughput', throughput_chart, finished)}</figure></div>"
    )


def _summary_line(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return ""
    run = summary.get("run") or {}
    requests = summary.get("requests") or {}
    api_requests = sum(v for k, v in requests.items() if k != "file" and isinstance(v, int))
    return (
        f"<p class='muted'>Last run: exit code {_e(summary.get('exit_code'))}, "
        f"{_e(summary.get('wall_time_s'))} s, {_e(run.get('submitted', 0))} submissions, "
        f"{_e(api_requests)} API requests, {_e(summary.get('throttled_429', 0))} answered 429, "
        f"{_e(run.get('images', 0))} images downloaded.</p>"
    )


def _render(
    campaign: Campaign,
    c: Collected,
    summary: Mapping[str, Any] | None,
    origin: str,
    prefix: str = "",
) -> str:
    name = _e(campaign.name)
    shown = {row[0] for row in c.rows}
    note = ""
    if c.left_out:
        total = len(c.rows) + c.left_out
        note = (
            f"<p class='note'>This page holds {len(c.rows):,} of {total:,} jobs (the first "
            f"{report_data.GALLERY_JOBS:,} in manifest order and up to "
            f"{report_data.FAILURE_ROWS:,} failed, lost or "
            "uncertain ones); the counts, problems and charts cover every job, "
            f"{prefix}results.jsonl lists every one and every image is in images/.</p>"
        )
    pager = (
        "<div class='pager {0}'><button class='prev' type='button'>‹ previous</button>"
        "<span class='where'></span><button class='next' type='button'>next ›</button></div>"
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{name}: runner report</title><style>{CSS}</style></head><body>"
        f"<header><h1>{name}</h1><p class='muted'>Report written {_e(_when(time.time()))} "
        f"from {_e(origin)}.</p>{_stats(c, campaign.budget.price_per_image)}"
        f"{_summary_line(summary)}</header><main>{_problems(c, shown)}{_charts(c)}"
        f"<h2 id='gallery-title'>Gallery</h2>{note}"
        "<div class='toolbar' id='toolbar' role='search'>"
        "<input id='q' type='search' placeholder='search prompts, ids and meta' "
        "aria-label='search prompts, ids and meta'>"
        "<select id='f-state' aria-label='state'></select>"
        "<select id='f-code' aria-label='failure code'></select>"
        "<select id='f-res' aria-label='resolution'></select>"
        "<select id='f-ar' aria-label='aspect ratio'></select>"
        "<select id='f-mk' aria-label='meta key'></select>"
        "<select id='f-mv' aria-label='meta value'></select>"
        "<select id='f-sort' aria-label='sort'></select>"
        "<select id='f-per' aria-label='rows a page'></select></div>"
        f"{pager.format('top')}<div id='gallery'>"
        f"<noscript><p class='note'>The gallery needs JavaScript; {prefix}results.jsonl "
        "lists every job.</p></noscript></div>"
        f"{pager.format('bottom')}</main>"
        "<div id='lightbox' class='lb' hidden role='dialog' aria-modal='true'>"
        "<div class='lb-box'><div class='lb-img' id='lb-img'></div><div class='lb-info'>"
        "<div class='lb-nav'><button id='lb-prev' type='button'>‹</button>"
        "<button id='lb-next' type='button'>›</button><span id='lb-where' class='muted'>"
        "</span><span style='flex:1'></span><button id='lb-close' type='button' "
        "aria-label='close'>✕</button></div><div id='lb-text'></div></div></div></div>"
        f"<footer>Written by runner. Images link to the files in images/; {prefix}results"
        f".jsonl, {prefix}summary.json and {prefix}metadata.jsonl hold the same data.</footer>"
        f'<script type="application/json" id="report-data">{data_json(c)}</script>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def _when(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _thumbnails(out: Path, c: Collected, budget_s: float) -> None:
    """Point the gallery's images at their thumbnails, making missing ones first."""
    present = [entry[0] for entry in c.files if entry[3]]
    have = make_thumbnails(out, present, budget_s)
    for entry in c.files:
        if entry[0] in have:
            entry[1] = thumb_path(entry[0])


def build_report(
    campaign: Campaign,
    index: LedgerIndex,
    summary: Mapping[str, Any] | None = None,
) -> str:
    """The page, as text (thumbnails that exist already are used; none is made)."""
    c = collect(campaign, index)
    _thumbnails(campaign.output.dir, c, 0.0)
    return _render(campaign, c, summary, ORIGIN)


def write_report(
    campaign: Campaign,
    index: LedgerIndex,
    summary: Mapping[str, Any] | None = None,
    origin: str | None = None,
    prefix: str = "",
) -> Path:
    """Write ``report.html`` in the output folder (atomically) and return its path; in the
    same pass rewrite ``metadata.jsonl`` and make missing thumbnails. ``origin`` says
    where the counts come from (default: the ledger in this folder); ``prefix`` starts
    the names of the files written and named on the page (the campaign view's
    ``campaign-``)."""
    out = campaign.output.dir
    metadata = MetadataWriter(out, prefix + METADATA_NAME)
    try:
        c = collect(campaign, index, metadata.add)
    except BaseException:
        metadata.abort()
        raise
    metadata.commit()
    _thumbnails(out, c, THUMB_BUDGET_S)
    path = out / (prefix + REPORT_NAME)
    write_atomic(path, _render(campaign, c, summary, origin or ORIGIN, prefix).encode())
    return path
