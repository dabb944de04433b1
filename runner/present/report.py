"""``report.html``: the campaign as one static page in the output folder.

Rewritten whole (temporary name, then rename) at the end of every run and by
``python -m runner MANIFEST --report``, from the ledger and the manifest (the data behind
``results.jsonl``). What it holds:

- the counts: jobs per state, images, spend, the last run's summary if there is one;
- a gallery: one card per done job (prompt, parameters, meta, timings) with its images
  as thumbnails linking to the files;
- the failures with their codes and messages;
- two inline SVG charts: completion times (task created to completed) and images
  finished per minute over time.

It must open offline in any browser, from the output folder or a copy of it: inline CSS,
relative links, no external asset. Prompts, meta and API messages are untrusted, so every
string that reaches the page goes through :func:`html.escape`.

Size: the counts and charts cover every job, but the gallery shows the first
:data:`GALLERY_JOBS` done jobs (manifest order) and the failure table the first
:data:`FAILURE_ROWS` failures; a note says so. With lazy-loaded thumbnails a 100,000-job
campaign still gives a page of a few megabytes that opens at once. ``results.jsonl``
lists everything.

A small script writes ``data-images`` and ``data-broken`` (images that did not load) on
``<body>``; with ``#check`` at the end of the URL it first loads every lazy image, so a
headless browser can verify the whole gallery.
"""

from __future__ import annotations

import html
import time
import urllib.parse
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import orjson

from runner.manifest.campaign import Campaign
from runner.manifest.jobspec import Job
from runner.state.index import LedgerIndex
from runner.state.record import JobRecord

from .charts import completion_histogram, throughput_chart
from .outputs import job_states, write_atomic

__all__ = ["FAILURE_ROWS", "GALLERY_JOBS", "REPORT_NAME", "build_report", "write_report"]

REPORT_NAME = "report.html"
GALLERY_JOBS = 1000
FAILURE_ROWS = 500
_THUMB_PX = 160


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _prompt(job: Job, limit: int) -> str:
    """The job's prompt, escaped, cut to ``limit`` characters (a page of 1,000 cards
    should not carry megabytes of prompt)."""
    text = str(job.input.get("prompt", ""))
    return _e(text if len(text) <= limit else text[: limit - 1] + "…")


@dataclass(slots=True)
class _Collected:
    states: Counter[str] = field(default_factory=Counter)
    images: int = 0
    images_planned: int = 0
    gallery: list[tuple[Job, JobRecord]] = field(default_factory=list)
    failures: dict[str, list[tuple[Job, JobRecord]]] = field(default_factory=dict)
    failure_counts: Counter[str] = field(default_factory=Counter)
    failure_rows: int = 0
    # Arrays of plain numbers, not lists of objects: a million done jobs take 24 MB here.
    completion_s: array[float] = field(default_factory=lambda: array("d"))
    finished: _Finished = field(default_factory=lambda: _Finished())  # (done at, images)


class _Finished(Sequence[tuple[float, int]]):
    """(done at, images) pairs kept in two arrays."""

    def __init__(self) -> None:
        self.times: array[float] = array("d")
        self.images: array[int] = array("l")

    def append(self, item: tuple[float, int]) -> None:
        self.times.append(item[0])
        self.images.append(item[1])

    def __len__(self) -> int:
        return len(self.times)

    @overload
    def __getitem__(self, i: int) -> tuple[float, int]: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[tuple[float, int]]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return list(zip(self.times[i], self.images[i], strict=True))
        return self.times[i], self.images[i]

    def __iter__(self) -> Iterator[tuple[float, int]]:
        return zip(self.times, self.images, strict=True)


def _collect(campaign: Campaign, index: LedgerIndex) -> _Collected:
    c = _Collected()
    for job, rec, state in job_states(campaign, index):
        c.states[state] += 1
        c.images_planned += job.max_images
        if rec is None:
            continue
        if rec.create_ms is not None and rec.complete_ms is not None and state != "failed":
            c.completion_s.append(max(0, rec.complete_ms - rec.create_ms) / 1000)
        if state == "done":
            c.images += len(rec.files)
            if rec.done_t is not None:
                c.finished.append((rec.done_t, len(rec.files)))
            if len(c.gallery) < GALLERY_JOBS:
                c.gallery.append((job, rec))
        elif state == "failed":
            code = rec.fail_code or "FAILED"
            c.failure_counts[code] += 1
            if c.failure_rows < FAILURE_ROWS:
                c.failures.setdefault(code, []).append((job, rec))
                c.failure_rows += 1
    return c


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 color:#1d1d1f;background:#f6f6f4}
header,main{max-width:1200px;margin:0 auto;padding:0 20px}
header{padding-top:18px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px}
h3{font-size:14px;margin:0 0 6px;word-break:break-all}
.muted{color:#6e6e73}
.stats{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.stat{background:#fff;border:1px solid #e2e2e0;border-radius:8px;padding:8px 14px}
.stat b{display:block;font-size:20px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:16px}
figure{margin:0;background:#fff;border:1px solid #e2e2e0;border-radius:8px;padding:10px}
figcaption{font-weight:600;margin-bottom:4px}
svg.chart{width:100%;height:auto;display:block}
svg .tick{font-size:11px;fill:#555}svg .axis{font-size:12px;fill:#333}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px}
.job{background:#fff;border:1px solid #e2e2e0;border-radius:8px;padding:12px}
.prompt{margin:0 0 8px}
.thumbs{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:8px}
.thumbs img{display:block;width:160px;height:auto;max-height:284px;object-fit:contain;
 background:#ececea;border-radius:4px}
.thumbs img.broken{outline:3px solid #d93025}
.missing{color:#d93025}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:0;font-size:12px}
dt{color:#6e6e73}dd{margin:0;word-break:break-word}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #e2e2e0;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f0f0ee}
.note{background:#fff8e1;border:1px solid #f0d98c;border-radius:6px;padding:6px 10px}
footer{max-width:1200px;margin:30px auto;padding:0 20px;color:#6e6e73;font-size:12px}
"""

# Marks images that fail to load, and counts them on <body> once the page has loaded.
# With #check in the URL it first makes every lazy image load, then counts.
_SCRIPT = """
document.addEventListener('error', function (ev) {
  if (ev.target && ev.target.tagName === 'IMG') ev.target.classList.add('broken');
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  function count() {
    var broken = 0;
    imgs.forEach(function (img) { if (img.complete && img.naturalWidth === 0) broken++; });
    document.body.setAttribute('data-images', String(imgs.length));
    document.body.setAttribute('data-broken', String(broken));
  }
  if (location.hash !== '#check') { count(); return; }
  Promise.all(imgs.map(function (img) {
    return new Promise(function (done) {
      img.addEventListener('load', done); img.addEventListener('error', done);
      img.loading = 'eager';
      if (img.complete) done();  // loaded or broken already (a deferred one is not)
    });
  })).then(function () { count(); document.body.setAttribute('data-checked', '1'); });
});
"""


def _when(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _thumb_size(job: Job) -> tuple[int, int]:
    """Thumbnail box from the job's aspect ratio, so the layout is stable before loading."""
    try:
        w, h = (float(x) for x in str(job.input.get("aspect_ratio")).split(":"))
    except ValueError:
        return _THUMB_PX, _THUMB_PX
    if w <= 0 or h <= 0 or not 0.1 <= h / w <= 10:
        return _THUMB_PX, _THUMB_PX
    return _THUMB_PX, round(_THUMB_PX * h / w)


def _card(out: Path, job: Job, rec: JobRecord) -> str:
    width, height = _thumb_size(job)
    thumbs = []
    for i in sorted(rec.files):
        path = str(rec.files[i].get("path") or "")
        if not path or not (out / path).is_file():
            thumbs.append(f'<span class="missing">image {i} missing: {_e(path)}</span>')
            continue
        href = _e(urllib.parse.quote(path))
        thumbs.append(
            f'<a href="{href}"><img src="{href}" alt="{_e(job.id)} image {i}" '
            f'loading="lazy" width="{width}" height="{height}"></a>'
        )
    params = [(k, v) for k, v in job.input.items() if k != "prompt"]
    rows = [f"<dt>{_e(k)}</dt><dd>{_e(_plain(v))}</dd>" for k, v in params]
    rows += [f"<dt>meta.{_e(k)}</dt><dd>{_e(_plain(v))}</dd>" for k, v in job.meta.items()]
    timing = _timings(rec)
    if timing:
        rows.append(f"<dt>timings</dt><dd>{_e(timing)}</dd>")
    rows.append(f"<dt>task</dt><dd>{_e(rec.task_id or '')}</dd>")
    return (
        f'<section class="job" id="job-{_e(job.id)}"><h3>{_e(job.id)}</h3>'
        f'<p class="prompt">{_prompt(job, 2000)}</p>'
        f'<div class="thumbs">{"".join(thumbs)}</div><dl>{"".join(rows)}</dl></section>'
    )


def _plain(value: object) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


def _timings(rec: JobRecord) -> str:
    parts = []
    if rec.create_ms is not None and rec.complete_ms is not None:
        total = (rec.complete_ms - rec.create_ms) / 1000
        parts.append(f"completed in {total:.2f} s")
        if rec.cost_ms is not None:
            parts.append(f"generation {rec.cost_ms / 1000:.2f} s")
    if rec.submitted_t is not None:
        parts.append(f"submitted {_when(rec.submitted_t)}")
    if rec.done_t is not None:
        parts.append(f"on disk {_when(rec.done_t)}")
    return "; ".join(parts)


def _failures(c: _Collected) -> str:
    if not c.failure_counts:
        return "<p class='muted'>No job failed.</p>"
    out = []
    for code, count in c.failure_counts.most_common():
        rows = [
            f"<tr><td>{_e(job.id)}</td><td>{_e(rec.fail_msg or '')}</td>"
            f"<td>{_prompt(job, 300)}</td></tr>"
            for job, rec in c.failures.get(code, [])
        ]
        out.append(
            f"<h3>{_e(code)}: {count} job{'s' if count != 1 else ''}</h3>"
            "<table><tr><th>job</th><th>message</th><th>prompt</th></tr>"
            f"{''.join(rows)}</table>"
        )
    total = sum(c.failure_counts.values())
    if total > c.failure_rows:
        out.append(
            f"<p class='note'>The first {c.failure_rows:,} of {total:,} failures are listed; "
            "results.jsonl has every one.</p>"
        )
    return "".join(out)


def _stat(label: str, value: object) -> str:
    return f'<div class="stat"><b>{_e(value)}</b>{_e(label)}</div>'


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


def build_report(
    campaign: Campaign,
    index: LedgerIndex,
    summary: Mapping[str, Any] | None = None,
) -> str:
    """The page, as text."""
    c = _collect(campaign, index)
    out = campaign.output.dir
    price = campaign.budget.price_per_image
    jobs = sum(c.states.values())
    done = c.states.get("done", 0)
    stats = [
        _stat("jobs", f"{jobs:,}"),
        _stat("done", f"{done:,}"),
        _stat("failed", f"{c.states.get('failed', 0):,}"),
        _stat("pending", f"{c.states.get('pending', 0):,}"),
        _stat("images", f"{c.images:,}"),
        _stat(f"spent at ${price}/image", f"${c.images * price:,.2f}"),
    ]
    for state in ("live", "downloading"):
        if c.states.get(state):
            stats.append(_stat(state, f"{c.states[state]:,}"))
    times = sorted(c.completion_s)
    quantiles = ""
    if times:
        p50, p90 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.9))]
        quantiles = f" (median {p50:.2f} s, 90th percentile {p90:.2f} s)"
    cards = "".join(_card(out, job, rec) for job, rec in c.gallery)
    if not cards:
        cards = "<p class='muted'>No job is done yet.</p>"
    note = ""
    if done > len(c.gallery):
        note = (
            f"<p class='note'>The first {len(c.gallery):,} of {done:,} done jobs are shown; "
            "results.jsonl lists every one, and every image is in images/.</p>"
        )
    name = _e(campaign.name)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{name}: runner report</title><style>{_CSS}</style>"
        f"<script>{_SCRIPT}</script></head><body>"
        f"<header><h1>{name}</h1><p class='muted'>Report written {_e(_when(time.time()))} "
        f"from the ledger in this folder.</p><div class='stats'>{''.join(stats)}</div>"
        f"{_summary_line(summary)}</header><main>"
        "<h2>Charts</h2><div class='charts'>"
        f"<figure><figcaption>Completion times{_e(quantiles)}</figcaption>"
        f"{completion_histogram('chart-completion', times)}</figure>"
        "<figure><figcaption>Throughput</figcaption>"
        f"{throughput_chart('chart-throughput', c.finished)}</figure></div>"
        f"<h2>Gallery</h2>{note}<div class='gallery'>{cards}</div>"
        f"<h2>Failures</h2>{_failures(c)}</main>"
        "<footer>Written by runner. Images link to the files in images/; "
        "results.jsonl and summary.json hold the same data.</footer></body></html>\n"
    )


def write_report(
    campaign: Campaign,
    index: LedgerIndex,
    summary: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.html`` in the output folder (atomically); return its path."""
    path = campaign.output.dir / REPORT_NAME
    write_atomic(path, build_report(campaign, index, summary).encode())
    return path
