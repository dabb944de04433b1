"""The manifest's jobs as a table: a few numbers a job, in manifest order, kept in the
start-up index so that a start with an unchanged manifest does not check it again.

Checking a manifest (:meth:`runner.manifest.joblist.JobList.validate`) expands and checks
every job and collapses repeats; what the start-ups (``--dry-run``, ``--status``, a run)
then need of each unique job is a handful of numbers: its id and the 64-bit hash of it
(:func:`runner.manifest.shards.id_hash`, which the ledger's packed done index uses too),
the first 64 bits of its fingerprint, its worst-case images, its resolution and aspect
ratio, and where it was written (a ``jobs:`` entry, or the byte offset and line number
of a ``jobs_file`` line, and which matrix variant), from which :meth:`JobTable.job`
makes the whole :class:`~runner.manifest.jobspec.Job` again when one is wanted.

The table is saved in ``<output.dir>/.index/jobs.bin`` (:mod:`runner.indexfile`) under
the key of the manifest's files: path, size and sha256 of every byte of the campaign
file and of its job file (and how the user named them, which the messages quote). Any
edit, even one that keeps the size and the modification time, changes the key; a
table under another key is never read.

Memory: about 57 bytes a job (a million jobs: 57 MB), in arrays, no object per job.

Owns: the table and its key. Must not know: the ledger, the run.
"""

from __future__ import annotations

import hashlib
import os
import stat
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from runner.indexfile import Section, read_index_file, write_index_file

from .jobspec import Job

__all__ = [
    "ENTRY",
    "JobTable",
    "SourceKey",
    "TableBuilder",
    "load_table",
    "save_table",
    "source_key",
    "table_mix",
]

#: the index file of the table, in the campaign's output folder
TABLE_NAME = "jobs.bin"

#: ``src`` of a ``jobs:`` entry: this bit, or'ed with the entry's index
ENTRY = 1 << 63


@dataclass(frozen=True, slots=True)
class SourceKey:
    """The manifest's files as the table's key knows them (``key``), and the size and
    modification time of the job file when it was read (a later pass checks them)."""

    key: dict[str, Any]
    stamps: dict[str, tuple[int, int]]  # path -> (size, mtime_ns)

    def unchanged(self) -> bool:
        """No file of the key changed since it was read (size and modification time)."""
        for path, stamp in self.stamps.items():
            try:
                info = os.stat(path)
            except OSError:
                return False
            if (info.st_size, info.st_mtime_ns) != stamp:
                return False
        return True


def source_key(files: Sequence[Path], extra: dict[str, Any]) -> SourceKey | None:
    """The key of a table made from ``files`` (and ``extra``: what else shapes the jobs
    or their messages); None when a file cannot be read or changed while it was read."""
    described: list[list[Any]] = []
    stamps: dict[str, tuple[int, int]] = {}
    for path in files:
        try:
            # Not a FIFO or device: opening one could block (the check refuses it).
            if not stat.S_ISREG(os.stat(path).st_mode):
                return None
            with path.open("rb") as f:
                before = os.fstat(f.fileno())
                digest = hashlib.file_digest(f, "sha256").hexdigest()
                after = os.fstat(f.fileno())
        except OSError:
            return None
        stamp = (after.st_size, after.st_mtime_ns)
        if (before.st_size, before.st_mtime_ns) != stamp:
            return None
        described.append([str(path), after.st_size, digest])
        stamps[str(path)] = stamp
    return SourceKey({"files": described, **extra}, stamps)


class JobTable:
    """The unique jobs of a manifest, in order, as columns (``len(table)`` rows).

    ``idh``: :func:`~runner.manifest.shards.id_hash` of each id; ``fp64``: the first 64
    bits of each fingerprint; ``imgs``: worst-case images; ``res``/``asp``: codes into
    ``res_names``/``asp_names``. :meth:`id` and :meth:`job` give a row's id and whole job."""

    def __init__(
        self,
        sections: dict[str, Section],
        res_names: list[str],
        asp_names: list[str],
        loader: Callable[[int, int, int, str], Job],
    ) -> None:
        self.idh: Sequence[int] = _column(sections, "idh")
        self.fp64: Sequence[int] = _column(sections, "fp64")
        self.imgs: Sequence[int] = _column(sections, "imgs")
        self.res: Sequence[int] = _column(sections, "res")
        self.asp: Sequence[int] = _column(sections, "asp")
        self._src: Sequence[int] = _column(sections, "src")
        self._line: Sequence[int] = _column(sections, "line")
        self._variant: Sequence[int] = _column(sections, "variant")
        self._id_end: Sequence[int] = _column(sections, "id_end")
        ids = sections["ids"]
        self._ids = ids if isinstance(ids, bytes | bytearray) else bytes(ids)
        self.res_names, self.asp_names = res_names, asp_names
        self._loader = loader
        self._sections = sections

    def __len__(self) -> int:
        return len(self.idh)

    def id(self, row: int) -> str:
        start = self._id_end[row - 1] if row else 0
        return self._ids[start : self._id_end[row]].decode()

    def job(self, row: int) -> Job:
        """The whole job of ``row``, expanded again from where it was written (raises
        :class:`~runner.errors.ManifestError` if that changed since it was checked)."""
        return self._loader(self._src[row], self._line[row], self._variant[row], self.id(row))

    def rows(self, shard: tuple[int, int] | None = None) -> Sequence[int]:
        """Every row, or shard K of N's (:func:`~runner.manifest.shards.shard_of`)."""
        if shard is None:
            return range(len(self))
        k, n = shard
        return array("I", [row for row, h in enumerate(self.idh) if h % n == k])

    def place(self, row: int) -> tuple[int, int]:
        """Where ``row`` was written: (``src``, line)."""
        return self._src[row], self._line[row]


def _column(sections: dict[str, Section], name: str) -> Sequence[int]:
    data = sections[name]
    if not isinstance(data, array):
        raise ValueError(f"{name} is not a column")
    return data


class TableBuilder:
    """Collects the table while the manifest is checked, one unique job at a time."""

    def __init__(self) -> None:
        self.columns: dict[str, array[int]] = {
            "idh": array("Q"),
            "fp64": array("Q"),
            "imgs": array("I"),
            "res": array("H"),
            "asp": array("H"),
            "src": array("Q"),
            "line": array("I"),
            "variant": array("H"),
            "id_end": array("Q"),
        }
        self.ids = bytearray()
        self.res_codes: dict[str, int] = {}
        self.asp_codes: dict[str, int] = {}
        s = self.columns
        self._idh, self._fp64, self._imgs = s["idh"].append, s["fp64"].append, s["imgs"].append
        self._res, self._asp = s["res"].append, s["asp"].append
        self._src, self._line = s["src"].append, s["line"].append
        self._variant, self._id_end = s["variant"].append, s["id_end"].append
        self.fp64 = s["fp64"]
        self.id_end = s["id_end"]

    def __len__(self) -> int:
        return len(self.fp64)

    def add(
        self, job_id: str, h: int, fp64: int, imgs: int, res: str, asp: str, src: int,
        line: int, variant: int,
    ) -> None:  # fmt: skip
        self._idh(h)
        self._fp64(fp64)
        self._imgs(imgs)
        self._res(self.res_codes.setdefault(res, len(self.res_codes)))
        self._asp(self.asp_codes.setdefault(asp, len(self.asp_codes)))
        self._src(src)
        self._line(line)
        self._variant(variant)
        self.ids += job_id.encode()
        self._id_end(len(self.ids))

    def id(self, row: int) -> str:
        start = self.id_end[row - 1] if row else 0
        return self.ids[start : self.id_end[row]].decode()

    def place(self, row: int) -> tuple[int, int]:
        return self.columns["src"][row], self.columns["line"][row]

    def mix(self) -> tuple[Counter[str], Counter[str]]:
        """Jobs per resolution and per aspect ratio, in order of first appearance."""
        c = self.columns
        return _mix(c["res"], c["asp"], list(self.res_codes), list(self.asp_codes), None)

    def table(self, loader: Callable[[int, int, int, str], Job]) -> JobTable:
        sections: dict[str, Section] = {**self.columns, "ids": bytes(self.ids)}
        self.ids = bytearray()
        return JobTable(sections, list(self.res_codes), list(self.asp_codes), loader)


def _mix(
    res: Sequence[int],
    asp: Sequence[int],
    res_names: list[str],
    asp_names: list[str],
    rows: Sequence[int] | None,
) -> tuple[Counter[str], Counter[str]]:
    if rows is None:
        res_counts, asp_counts = Counter(res), Counter(asp)
    else:
        res_counts, asp_counts = Counter(), Counter()
        for row in rows:
            res_counts[res[row]] += 1
            asp_counts[asp[row]] += 1
    # A Counter keeps the order keys first came in: the manifest's order, as a pass over
    # the jobs would count them.
    return (
        Counter({res_names[c]: n for c, n in res_counts.items()}),
        Counter({asp_names[c]: n for c, n in asp_counts.items()}),
    )


def table_mix(table: JobTable, rows: Sequence[int] | None) -> tuple[Counter[str], Counter[str]]:
    """Jobs of ``rows`` (every row: None) per resolution and aspect ratio, in order of
    first appearance."""
    return _mix(table.res, table.asp, table.res_names, table.asp_names, rows)


def save_table(
    folder: Path, key: SourceKey, table: JobTable, meta: dict[str, Any], repeats: Sequence[int]
) -> bool:
    """Keep ``table`` (and ``meta``: counts and warnings; ``repeats``: positions of the
    jobs that collapsed into an earlier one) in ``folder``'s start-up index."""
    head = {**meta, "res_names": table.res_names, "asp_names": table.asp_names}
    sections = {
        "meta": orjson.dumps(head),
        **table._sections,
        "repeats": array("Q", sorted(repeats)),
    }
    return write_index_file(folder, TABLE_NAME, key.key, sections)


def load_table(
    folder: Path, key: SourceKey, loader: Callable[[int, int, int, str], Job]
) -> tuple[JobTable, dict[str, Any], Sequence[int]] | None:
    """The table kept in ``folder`` for ``key``, its meta and repeats; None if none."""
    sections = read_index_file(folder, TABLE_NAME, key.key)
    if sections is None:
        return None
    try:
        meta = orjson.loads(bytes(sections.pop("meta")))
        repeats = sections.pop("repeats")
        table = JobTable(sections, list(meta["res_names"]), list(meta["asp_names"]), loader)
        n = len(table)
        lengths = {len(v) for k, v in sections.items() if k != "ids"}
        if lengths != {n} or not isinstance(repeats, array) or not isinstance(meta, dict):
            return None
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return None
    return table, meta, repeats
