"""Manifest loading: a campaign file or a job list becomes a validated :class:`Campaign`.

Contract (the user-facing rules are in ``design/interface.md``, "Manifest"):

- ``.yaml``/``.yml`` is a campaign; ``.jsonl`` is a plain job list (one job object per line,
  blank lines allowed, every setting at its default, name = the file's stem). Relative
  paths inside a manifest (``jobs_file``, ``output.dir``) resolve against its own folder.
- Every key is optional except that there must be at least one job. Unknown keys, wrong
  types and out-of-range values raise :class:`~runner.errors.ManifestError` whose ``where``
  names the file and the line (JSONL) or key path (YAML, with its line) and whose message
  says what is allowed. No input value, anywhere, produces any other exception.
- ``overrides`` (CLI options) win over the manifest and are checked the same way; their
  errors name the option (``--concurrency``). The settings rules are
  :mod:`runner.manifest.settings`.
- Jobs (``jobs:`` first, then ``jobs_file`` lines) are expanded and checked by
  :class:`runner.manifest.jobspec.JobSpec` and streamed by
  :class:`runner.manifest.joblist.JobList`.
  Identical jobs (same id, same fingerprint) collapse into the first with a warning;
  different jobs under one id are an error naming both places.
- Loading streams the job file and keeps only a compact id -> (fingerprint, place) map;
  :meth:`Campaign.jobs` streams it again and yields exactly the jobs validation counted,
  refusing to go on if the file changed in between.
- Output file names are :mod:`runner.manifest.naming`.

Owns: :class:`Campaign` and loading. Must not know: the API, the ledger, the run.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import ManifestError

from .joblist import JobList
from .jobspec import Job, JobSpec
from .messages import show
from .naming import Output
from .settings import (
    ApiSettings,
    Budget,
    Limits,
    Polling,
    Retry,
    Section,
    check_path,
    read_settings,
)
from .shards import shard_folder, shard_of
from .yamldoc import YamlDoc, read_yaml

__all__ = ["Campaign", "load_campaign"]

_TOP_KEYS = (
    "name", "api", "limits", "polling", "retry", "defaults", "matrix", "jobs", "jobs_file",
    "output", "budget",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Campaign:
    """A validated manifest. ``job_count``/``image_count`` are after expansion and collapsing."""

    name: str
    source: Path
    api: ApiSettings
    limits: Limits
    polling: Polling
    retry: Retry
    output: Output
    budget: Budget
    job_count: int
    image_count: int  # the worst case: the sum of max_images
    warnings: tuple[str, ...]
    _jobs: JobList = field(repr=False, compare=False)
    shard: tuple[int, int] | None = None  # (K, N): only the jobs of shard K of N

    def jobs(self) -> Iterator[Job]:
        """Yield the final, de-duplicated jobs in manifest order, re-reading the job file
        (of one shard's, when ``shard`` is set: see :mod:`runner.manifest.shards`)."""
        if self.shard is None:
            return self._jobs.unique()
        k, n = self.shard
        return (job for job in self._jobs.unique() if shard_of(job.id, n) == k)

    def sharded(self, k: int, n: int) -> Campaign:
        """The campaign as shard K of N sees it: its jobs only, its own folder
        (:func:`runner.manifest.shards.shard_folder`)."""
        jobs = images = 0
        for job in self._jobs.unique():
            if shard_of(job.id, n) == k:
                jobs += 1
                images += job.max_images
        output = dataclasses.replace(self.output, dir=shard_folder(self.output.dir, k, n))
        return dataclasses.replace(
            self, output=output, job_count=jobs, image_count=images, shard=(k, n)
        )

    def mix(self) -> tuple[Counter[str], Counter[str]] | None:
        """Jobs per resolution and per aspect ratio, as counted while the manifest was
        checked; None for a shard (its share is known only by streaming it)."""
        if self.shard is not None:
            return None
        return Counter(self._jobs.resolutions), Counter(self._jobs.aspect_ratios)


def load_campaign(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Campaign:
    """Read, check and expand a manifest; raise ManifestError for anything wrong in it."""
    display = str(path)  # messages name the file as the user wrote it
    source = Path(os.path.abspath(display))
    folder = source.parent
    suffix = source.suffix.lower()
    if suffix in (".yaml", ".yml"):
        doc, data = read_yaml(source, display)
    elif suffix == ".jsonl":
        doc, data = YamlDoc(display, None), {}
    else:
        raise ManifestError(
            f"{suffix or 'a file without extension'} is not a manifest; use a .yaml/.yml "
            "campaign or a .jsonl job list",
            display,
        )
    root = Section(doc.where, data, (), _TOP_KEYS)
    name, parts = read_settings(root, source, display, overrides or {})

    entries = root.data.get("jobs")
    if entries is not None and not isinstance(entries, list):
        raise ManifestError(
            f"{show(entries)} is not allowed; use a list of jobs", root.where("jobs")
        )
    jobs_file, file_display, file_where = None, display, display
    if suffix == ".jsonl":
        jobs_file = source
    elif (text := root.get("jobs_file", check_path)) is not None:
        jobs_file = Path(os.path.normpath(folder / text))
        file_display = text if os.path.isabs(text) else os.path.join(os.path.dirname(display), text)
        file_where = root.where("jobs_file")
    spec = JobSpec(
        parts["api"].model, root.data.get("defaults"), root.data.get("matrix"), doc.where
    )
    job_list = JobList(spec, entries or [], doc.where, jobs_file, file_display, file_where)
    job_count, image_count, warnings = job_list.validate()
    if job_count == 0:
        raise ManifestError(
            "there are no jobs; add a jobs: list or a jobs_file: (one JSON job per line)", display
        )
    budget: Budget = parts["budget"]
    if budget.max_images is not None and image_count > budget.max_images:
        warnings.append(
            f"the jobs may produce up to {image_count} images, more than budget.max_images "
            f"({budget.max_images}); the run stops at the cap"
        )
    cost = image_count * budget.price_per_image
    if budget.max_cost is not None and cost > budget.max_cost:
        warnings.append(
            f"the jobs may cost up to {cost:.2f}, more than budget.max_cost "
            f"({budget.max_cost:.2f}); the run stops at the cap"
        )
    return Campaign(
        name=name, source=source, **parts, job_count=job_count, image_count=image_count,
        warnings=tuple(warnings), _jobs=job_list,
    )  # fmt: skip
