"""What ``report.html`` shows, gathered in one pass over the manifest and the ledger.

:func:`collect` walks the manifest's jobs with their ledger state once: the counts per
state, the problems (failures and losses by code, uncertain submissions), the series of
the charts (per resolution), and the gallery's rows as the page's script reads them (see
:mod:`runner.report_page` for their layout), with the values variants share (prompts,
meta, input fields, messages) stored once in tables. A done job's record is read from its
ledger line and handed to ``on_done`` (the ``metadata.jsonl`` writer), then dropped;
memory follows the gallery's caps, not the campaign's size.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runner.manifest.campaign import Campaign
from runner.manifest.jobspec import Job
from runner.present.dataset import api_input, derived_id
from runner.state.index import LedgerIndex
from runner.state.record import JobRecord

__all__ = ["FAILURE_ROWS", "GALLERY_JOBS", "Collected", "Problem", "collect", "data_json"]

#: jobs the gallery holds, in manifest order (the counts and charts cover every job)
GALLERY_JOBS = 50_000
#: failed, lost or uncertain jobs the gallery holds beyond GALLERY_JOBS
FAILURE_ROWS = 10_000
#: job links listed per failure code (the code's filter shows them all)
JOB_LINKS = 8


class Table:
    """Values stored once in the page, referred to by index (variants share theirs)."""

    def __init__(self) -> None:
        self.index: dict[bytes, int] = {}
        self.values: list[Any] = []

    def __call__(self, value: Any) -> int:
        key = orjson.dumps(value, default=str)
        at = self.index.get(key)
        if at is None:
            at = self.index[key] = len(self.values)
            self.values.append(value)
        return at


@dataclass(slots=True)
class Problem:
    """Jobs of one failure (or loss) code: how many, one message, the first ids."""

    count: int = 0
    message: str = ""
    ids: list[str] = field(default_factory=list)

    def add(self, job_id: str, message: str | None) -> None:
        self.count += 1
        if not self.message and message:
            self.message = message
        if len(self.ids) < JOB_LINKS:
            self.ids.append(job_id)


@dataclass(slots=True)
class Collected:
    """Everything the page shows, from one pass (see :func:`collect`)."""

    states: Counter[str] = field(default_factory=Counter)
    images: int = 0
    failures: dict[str, Problem] = field(default_factory=dict)
    lost: dict[str, Problem] = field(default_factory=dict)
    uncertain: Problem = field(default_factory=Problem)
    uncertain_submissions: int = 0
    # Arrays of plain numbers, not lists of objects: a million done jobs take 24 MB here.
    completion_s: dict[str, array[float]] = field(default_factory=dict)
    finished_t: dict[str, array[float]] = field(default_factory=dict)
    finished_n: dict[str, array[int]] = field(default_factory=dict)
    # the gallery: rows (see report_page), in manifest order, and the tables they index
    rows: list[list[Any]] = field(default_factory=list)
    problem_rows: int = 0
    left_out: int = 0
    groups: dict[str, int] = field(default_factory=dict)
    prompts: Table = field(default_factory=Table)
    metas: Table = field(default_factory=Table)
    inputs: Table = field(default_factory=Table)
    messages: Table = field(default_factory=Table)
    #: [path, thumbnail, bytes, on disk] of every image in the gallery, in page order
    files: list[list[Any]] = field(default_factory=list)

    def row(self, out: Path, job: Job, rec: JobRecord | None, state: str, unc: int) -> None:
        files: list[list[Any]] = []
        if rec is not None and state == "done":
            for i in sorted(rec.files):
                path = str(rec.files[i].get("path") or "")
                on_disk = bool(path) and (out / path).is_file()
                entry = [path, None, rec.files[i].get("bytes"), on_disk]
                files.append(entry)
                self.files.append(entry)
        prompt = str(job.input.get("prompt", ""))  # whole: the API takes up to 5,000
        failed = state in ("failed", "lost") and rec is not None
        took = None
        if rec is not None and rec.create_ms is not None and rec.complete_ms is not None:
            took = round(max(0, rec.complete_ms - rec.create_ms) / 1000, 3)
        self.rows.append(
            [
                job.id,
                self.groups.setdefault(job.where, len(self.groups)),
                state,
                self.prompts(prompt),
                self.metas(job.meta),
                self.inputs({k: v for k, v in api_input(job).items() if k != "prompt"}),
                files,
                (rec.fail_code or "FAILED") if failed and rec else None,
                self.messages(rec.fail_msg or "") if failed and rec else None,
                unc,
                rec.submitted_t if rec is not None else None,
                took,
                rec.task_id if rec is not None else None,
                1 if derived_id(job) else 0,
                rec.done_t if rec is not None and state == "done" else None,
            ]
        )


def _series(store: dict[str, Any], key: str, typecode: str) -> Any:
    if key not in store:
        store[key] = array(typecode)
    return store[key]


def collect(
    campaign: Campaign,
    index: LedgerIndex,
    on_done: Callable[[Job, JobRecord], None] | None = None,
) -> Collected:
    """One pass over the manifest and the ledger; ``on_done`` sees every done job."""
    c = Collected()
    out = campaign.output.dir
    for job in campaign.jobs():
        state, rec, _, unc = index.status(job.id, job.fingerprint)
        if state == "done" and rec is None:
            rec = index.get(job.id)
        c.states[state] += 1
        resolution = str(job.input.get("resolution", "2K"))  # the API's default
        if rec is not None:
            if state == "done":
                c.images += len(rec.files)
                if on_done is not None:
                    on_done(job, rec)
                if rec.done_t is not None:
                    _series(c.finished_t, resolution, "d").append(rec.done_t)
                    _series(c.finished_n, resolution, "l").append(len(rec.files))
            if rec.create_ms is not None and rec.complete_ms is not None and state == "done":
                seconds = max(0, rec.complete_ms - rec.create_ms) / 1000
                _series(c.completion_s, resolution, "d").append(seconds)
            if state == "failed":
                c.failures.setdefault(rec.fail_code or "FAILED", Problem()).add(
                    job.id, rec.fail_msg
                )
            elif state == "lost":
                c.lost.setdefault(rec.fail_code or "LOST", Problem()).add(job.id, rec.fail_msg)
        if unc:
            c.uncertain.add(job.id, None)
            c.uncertain_submissions += unc
        problem = state in ("failed", "lost") or unc > 0
        if len(c.rows) - c.problem_rows < GALLERY_JOBS:
            c.row(out, job, rec, state, unc)
        elif problem and c.problem_rows < FAILURE_ROWS:
            c.row(out, job, rec, state, unc)
            c.problem_rows += 1
        else:
            c.left_out += 1
    return c


def data_json(c: Collected) -> str:
    data = {
        "J": c.rows,
        "P": c.prompts.values,
        "M": c.metas.values,
        "X": c.inputs.values,
        "E": c.messages.values,
    }
    # "<" only occurs inside JSON strings, where \u003c means the same: the text can never
    # close its <script> element.
    return orjson.dumps(data, default=str).replace(b"<", b"\\u003c").decode()
