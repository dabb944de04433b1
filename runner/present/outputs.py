"""What a run leaves beside its images: ``results.jsonl`` and ``summary.json``, and the
ledger views behind ``--status``, ``--dry-run`` and ``report.html``.

Both files are rewritten whole at the end of every run (to a temporary name, then
renamed), from the ledger: they always describe the campaign as it stands, across every
run that worked on it, never half of it. Both are written as the manifest streams by,
reading a done job's details from its ledger line one at a time, so memory does not grow
with the number of jobs.

Owns: both files, the ledger views and :class:`RunCounters`. Must not know: the API,
the run's machinery (it is handed counters and statistics).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from runner.manifest.campaign import Campaign
from runner.manifest.jobspec import Job
from runner.state.index import LedgerIndex
from runner.state.record import JobRecord, JobState

if TYPE_CHECKING:  # the client (and aiohttp) are not needed to read a ledger
    from runner.api.client import ClientStats

__all__ = [
    "LedgerView",
    "RunCounters",
    "job_states",
    "ledger_view",
    "write_atomic",
    "write_campaign_summary",
    "write_results",
    "write_summary",
]

#: prompts quoted as examples (``--status``) are cut to this many characters
EXAMPLE_PROMPT_CHARS = 80
#: job ids listed by --dry-run for changed and lost jobs
EXAMPLE_IDS = 10


@dataclass(slots=True)
class RunCounters:
    """What this run did (the summary's run section)."""

    submitted: int = 0
    resubmitted: int = 0  # resubmissions after a retryable task failure
    uncertain: int = 0  # submissions whose outcome could not be known
    done: int = 0
    failed: int = 0
    images: int = 0
    downloading: int = 0
    download_parked: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    polled_results: int = 0  # tasks whose end was learned by polling
    webhook_results: int = 0  # ... by a webhook (callback mode)
    webhook_duplicates: int = 0
    webhook_rejected: int = 0  # forged, malformed or for unknown tasks
    timed_out: int = 0  # tasks that outlived polling.timeout (polled again next run)
    unknown_tasks: int = 0  # tasks the API answered 404 for while it should keep them
    uncertain_gave_up: int = 0  # jobs left pending after retry.uncertain unknown outcomes
    not_sent: int = 0  # jobs left pending: their submission could not reach the API
    changed_in_flight: int = 0  # edited jobs whose earlier content's task was finished
    budget_refused: int = 0  # jobs the budget cap kept from a submission (or a retry)
    #: submissions that waited retry.slot_wait for a task slot in vain (left pending)
    slot_waits_expired: int = 0
    lost: int = 0  # jobs whose paid images are gone for good (URL_EXPIRED, TASK_GONE)
    budget_stopped: bool = False
    remaining: int = 0
    wall_time_s: float = 0.0


def write_atomic(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write a whole file (bytes, or chunks as they come) under a temporary name, then
    rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        if isinstance(data, bytes):
            f.write(data)
        else:
            f.writelines(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def job_states(
    campaign: Campaign, index: LedgerIndex
) -> Iterator[tuple[Job, JobRecord | None, JobState]]:
    """Every manifest job in order, with its ledger record (None when the ledger has none
    for this content) and its state. A done job's record is read from its ledger line
    (and not kept)."""
    for job in campaign.jobs():
        state, rec, _, _ = index.status(job.id, job.fingerprint)
        if state is JobState.DONE and rec is None:
            rec = index.get(job.id)
        yield job, rec, state


def write_results(campaign: Campaign, index: LedgerIndex, name: str = "results.jsonl") -> None:
    """One line per manifest job that reached an end (done or failed)."""
    write_atomic(campaign.output.dir / name, _result_lines(campaign, index))


def _result_lines(campaign: Campaign, index: LedgerIndex) -> Iterator[bytes]:
    for job, rec, state in job_states(campaign, index):
        if rec is None or not state.ended:
            continue
        entry: dict[str, Any] = {
            "id": job.id,
            "state": state,
            "input": job.input,
            "meta": job.meta,
            "task_id": rec.task_id,
            "files": [rec.files[i] for i in sorted(rec.files)] if state is JobState.DONE else [],
            "fail_code": rec.fail_code if state is not JobState.DONE else None,
            "fail_message": rec.fail_msg if state is not JobState.DONE else None,
            "submissions": rec.submits,
            "timings": {
                "submitted_at": rec.submitted_t,
                "create_ms": rec.create_ms,
                "complete_ms": rec.complete_ms,
                "cost_ms": rec.cost_ms,
                "done_at": rec.done_t,
            },
        }
        yield orjson.dumps(entry) + b"\n"


@dataclass(slots=True)
class LedgerView:
    """The campaign as the ledger sees it, job by job of the manifest."""

    jobs: int = 0
    images_planned: int = 0  # worst case: sum of max_images
    states: Counter[JobState] = field(default_factory=Counter)
    images_done: int = 0
    uncertain: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # by fail code
    #: fail code -> up to 3 examples: {"id", "prompt" (cut), "message"}
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    resolutions: Counter[str] = field(default_factory=Counter)  # jobs per resolution
    aspect_ratios: Counter[str] = field(default_factory=Counter)  # jobs per aspect ratio
    images_pending: int = 0  # worst case, of the jobs not done or failed
    #: images the API billed over the ledger's life, and what uncertain submissions may
    #: have cost on top (at most)
    images_paid: int = 0
    images_uncertain: int = 0
    #: jobs done under other content (edited since): they run and are paid for again
    changed: int = 0
    changed_images: int = 0  # worst case
    #: paid jobs whose images are gone for good: paying again is --retry-failed
    lost_images: int = 0  # worst case of paying again
    lost_codes: Counter[str] = field(default_factory=Counter)  # URL_EXPIRED, TASK_GONE
    #: up to EXAMPLE_IDS ids of each: "changed", "lost"
    ids: dict[str, list[str]] = field(default_factory=dict)

    def state_counts(self) -> dict[str, int]:
        """Jobs per state, keyed by the states' words (for JSON)."""
        return {state.value: n for state, n in self.states.items()}


def _cut(text: str, limit: int = EXAMPLE_PROMPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _note(ids: dict[str, list[str]], kind: str, job_id: str) -> None:
    listed = ids.setdefault(kind, [])
    if len(listed) < EXAMPLE_IDS:
        listed.append(job_id)


def ledger_view(campaign: Campaign, index: LedgerIndex) -> LedgerView:
    """One pass over the manifest's jobs as rows of its table (a few numbers a job, no
    job object): counts per state, the plan's mix, failures by code. Reads nothing beyond
    the index and the table: a done job's counts are in its packed entry, and a job is
    made whole again from the manifest only when the ledger knows it otherwise (failed,
    in flight, edited since done)."""
    view = LedgerView()
    view.images_paid = index.billed_images()
    view.images_uncertain = index.uncertain_images()
    view.jobs, view.images_planned = campaign.job_count, campaign.image_count
    view.resolutions, view.aspect_ratios = campaign.mix()
    if not index and view.jobs:
        # Nothing in the ledger: the plan is what checking the manifest counted.
        view.images_pending = campaign.image_count
        view.states[JobState.PENDING] = campaign.job_count
        return view
    table, rows = campaign.table, campaign.rows()
    done, view.images_done, view.uncertain, rest = index.done_rows(table.idh, table.fp64, rows)
    states: Counter[JobState] = Counter()
    #: the first row in each state: the views list states in the order the jobs meet them
    first: dict[JobState, int] = {}
    if done:
        states[JobState.DONE] = done
        first[JobState.DONE] = _first_not_in(rows, rest)
    imgs = table.imgs
    for row in rest:
        job_id = table.id(row)
        if not index.knows(job_id):  # pending, and never changed: what status() says
            state = JobState.PENDING
            view.images_pending += imgs[row]
        else:
            state = _tally(view, index, table.job(row))
        states[state] += 1
        first.setdefault(state, row)
    view.states = Counter({state: states[state] for state in sorted(first, key=first.__getitem__)})
    return view


def _first_not_in(rows: Sequence[int], rest: Sequence[int]) -> int:
    """The first of ``rows`` (ascending) that ``rest`` (a subsequence of them) lacks."""
    for i, row in enumerate(rows):
        if i >= len(rest) or rest[i] != row:
            return row
    raise ValueError("every row is in rest")


def _tally(view: LedgerView, index: LedgerIndex, job: Job) -> JobState:
    """Count one job the ledger knows something of, but its state, which it returns."""
    state, rec, images, uncertain = index.status(job.id, job.fingerprint)
    inp = job.input
    if state is JobState.PENDING:  # work in flight is paid for already
        view.images_pending += job.max_images
    if state is JobState.PENDING and index.changed_since_done(job.id, job.fingerprint):
        view.changed += 1
        view.changed_images += job.max_images
        _note(view.ids, "changed", job.id)
    elif state is JobState.LOST:
        view.lost_images += job.max_images
        view.lost_codes[(rec.fail_code if rec else None) or "LOST"] += 1
        _note(view.ids, "lost", job.id)
    view.uncertain += uncertain
    if state is JobState.DONE:
        view.images_done += images
    elif state is JobState.FAILED and rec is not None:
        code = rec.fail_code or "FAILED"
        view.failures[code] += 1
        examples = view.examples.setdefault(code, [])
        if len(examples) < 3:
            prompt = inp.get("prompt")
            examples.append(
                {
                    "id": job.id,
                    "prompt": _cut(prompt if isinstance(prompt, str) else ""),
                    "message": _cut(rec.fail_msg or "", 200),
                }
            )
    return state


def _money_and_counts(campaign: Campaign, view: LedgerView) -> dict[str, Any]:
    """What a summary says of the ledger: jobs by state, images, and the money, counted
    from the API's side (every image of every task it reported successful, whether or
    not it reached the disk)."""
    price = campaign.budget.price_per_image
    return {
        "jobs": {"total": view.jobs, **view.state_counts()},
        "images": view.images_done,
        "images_paid": view.images_paid,
        "estimated_spend_usd": round(view.images_paid * price, 4),
        "price_per_image_usd": price,
        "failures": dict(view.failures),
    }


def _write_summary(
    campaign: Campaign, summary: dict[str, Any], name: str = "summary.json"
) -> dict[str, Any]:
    write_atomic(
        campaign.output.dir / name,
        orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n",
    )
    return summary


def write_summary(
    campaign: Campaign,
    view: LedgerView,
    run: RunCounters,
    stats: ClientStats,
    exit_code: int,
) -> dict[str, Any]:
    """A run's ``summary.json``: the ledger's picture, then what this run did."""
    return _write_summary(
        campaign,
        {
            "name": campaign.name,
            "exit_code": exit_code,
            **_money_and_counts(campaign, view),
            "uncertain_submissions": {
                "this_run": run.uncertain,
                "all_runs": view.uncertain,
                "images_at_most": view.images_uncertain,
            },
            "requests": dict(stats.requests),
            "throttled_429": stats.throttled,
            "retries": stats.retries,
            "errors": dict(stats.errors),
            "run": asdict(run),
            "wall_time_s": round(run.wall_time_s, 3),
        },
    )


def write_campaign_summary(
    campaign: Campaign,
    view: LedgerView,
    layouts: list[dict[str, Any]],
    disagreements: dict[str, int],
    name: str,
) -> dict[str, Any]:
    """The campaign-level summary, ``name`` in ``output.dir`` (``--report`` over layouts):
    the counts of every job once, the money every layout's folder paid, and one entry per
    layout folder (``layouts``: its folder relative to ``output.dir``, and the exit code
    and wall time of its last run when its own summary says). No ``run`` section: it
    describes no one run."""
    return _write_summary(
        campaign,
        {
            "name": campaign.name,
            "scope": "campaign",
            **_money_and_counts(campaign, view),
            "uncertain_submissions": {
                "all_runs": view.uncertain,
                "images_at_most": view.images_uncertain,
            },
            "layouts": layouts,
            "disagreements": disagreements,
        },
        name,
    )
