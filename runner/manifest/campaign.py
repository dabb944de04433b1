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
- Loading streams the job file and keeps the unique jobs as a table of a few numbers each
  (:mod:`runner.manifest.jobtable`), which it saves in ``<output.dir>/.index/`` keyed by
  the manifest's bytes: a later load of the same bytes reads the table instead of checking
  every job again (the warnings and counts come with it). :meth:`Campaign.jobs` streams
  the file again and yields exactly the jobs validation counted, refusing to go on if the
  file changed in between; :meth:`Campaign.rows` and :attr:`Campaign.table` are the
  same jobs as rows of the table.
- Output file names are :mod:`runner.manifest.naming`.

Owns: :class:`Campaign` and loading. Must not know: the API, the ledger, the run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import ManifestError
from runner.indexfile import INDEX_DIR

from .joblist import JobList
from .jobspec import Job, JobSpec
from .jobtable import TABLE_NAME, JobTable, SourceKey, load_table, save_table, source_key, table_mix
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

log = logging.getLogger("runner")

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
    #: the table's rows of this campaign (a shard's); None: every row
    _rows: Sequence[int] | None = field(default=None, repr=False, compare=False)
    #: the table to keep in the start-up index once the output folder exists (it did not)
    _unsaved: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def table(self) -> JobTable:
        """The unique jobs of the whole manifest as columns (:mod:`runner.manifest.jobtable`);
        after :meth:`release_table`, made again by checking the manifest."""
        if self._jobs.table is None:
            self._jobs.validate()
        table = self._jobs.table
        assert table is not None
        return table

    def release_table(self) -> None:
        """Let the table's memory go (a run's end, before its report: what needs memory
        most); :attr:`table` checks the manifest again if it is wanted after all."""
        self._jobs.table = None

    def rows(self) -> Sequence[int]:
        """The rows of :attr:`table` that are this campaign's jobs (a shard's), in order:
        the jobs :meth:`jobs` yields."""
        return self._rows if self._rows is not None else range(len(self.table))

    def save_index(self) -> None:
        """Keep the job table in the start-up index if loading could not (the output
        folder did not exist yet: a run calls this once it does)."""
        while self._unsaved:
            _save(*self._unsaved.pop())

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
        table = self.table
        rows = table.rows((k, n))
        imgs = table.imgs
        images = sum(imgs[row] for row in rows)
        output = dataclasses.replace(self.output, dir=shard_folder(self.output.dir, k, n))
        return dataclasses.replace(
            self, output=output, job_count=len(rows), image_count=images, shard=(k, n),
            _rows=rows,
        )  # fmt: skip

    def mix(self) -> tuple[Counter[str], Counter[str]]:
        """Jobs per resolution and per aspect ratio, in manifest order of first
        appearance: as counted while the manifest was checked, or, for a shard, from the
        table."""
        if self.shard is not None:
            return table_mix(self.table, self.rows())
        return Counter(self._jobs.resolutions), Counter(self._jobs.aspect_ratios)


def load_campaign(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Campaign:
    """Read, check and expand a manifest; raise ManifestError for anything wrong in it."""
    display = str(path)  # messages name the file as the user wrote it
    source = Path(os.path.abspath(display))
    folder = source.parent
    suffix = source.suffix.lower()
    first_seen = _stamp(source)
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
    index_dir: Path = parts["output"].dir
    files = [source] + ([jobs_file] if jobs_file is not None and jobs_file != source else [])
    key = source_key(files, {"display": display, "jobs": file_display, "at": file_where})
    if key is not None and key.stamps[str(source)] != first_seen:
        key = None  # the campaign file changed while it was read: no index this time
    unsaved: list[Any] = []
    loaded = load_table(index_dir, key, job_list._job_at) if key is not None else None
    if loaded is not None and key is not None:
        table, meta, repeats = loaded
        stamp = key.stamps.get(str(jobs_file)) if jobs_file is not None else None
        job_list.adopt(table, repeats, stamp)
        job_count, image_count = int(meta["jobs"]), int(meta["images"])
        warnings = [str(w) for w in meta["warnings"]]
        log.debug(
            "start-up index: %d jobs of the manifest read from %s (its bytes unchanged "
            "since they were checked)",
            job_count,
            index_dir / INDEX_DIR / TABLE_NAME,
        )
    else:
        job_count, image_count, warnings = job_list.validate()
        log.debug("start-up index: the manifest's %d jobs checked", job_count)
        if key is not None:
            meta = {"jobs": job_count, "images": image_count, "warnings": warnings}
            pending = (index_dir, key, job_list, meta)
            if not _save(*pending):
                unsaved.append(pending)
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
        warnings=tuple(warnings), _jobs=job_list, _unsaved=unsaved,
    )  # fmt: skip


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _save(folder: Path, key: SourceKey, job_list: JobList, meta: dict[str, Any]) -> bool:
    """Keep the checked table in ``folder``'s start-up index, if the folder exists and
    the manifest's files are still the ones checked."""
    if job_list.table is None or not folder.is_dir() or not key.unchanged():
        return False
    saved = save_table(folder, key, job_list.table, meta, sorted(job_list._repeats))
    if saved:
        log.debug("start-up index: the manifest's jobs kept in %s", folder / INDEX_DIR)
    return saved
