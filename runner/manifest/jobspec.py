"""Job expansion: how one raw job entry becomes final :class:`Job` objects.

:class:`JobSpec` merges ``defaults`` under an entry, expands it over its matrix and checks
every field with :mod:`runner.manifest.fields`. The id is explicit (suffixed per matrix value, e.g.
``hero.16-9``) or derived from the fingerprint of the final input (``j`` + 16 hex digits),
so it survives edits of other lines.

Matrix rules: an entry's matrix is the campaign's ``matrix``, or the entry's own
``matrix:`` when it has one, which replaces the campaign's whole (``matrix: {}`` for none).
A matrix value wins over ``defaults``. An entry that sets a field its matrix varies is an
error (it would otherwise quietly escape that axis); so is a matrix whose variants number
more than 10,000.

Every problem raises :class:`~runner.errors.ManifestError` at the place it was written,
given by the caller's ``where`` function (key path -> ``"campaign.yaml:14: jobs[3].prompt"``).
Streaming a whole manifest's jobs and collapsing duplicates is :mod:`runner.manifest.joblist`.

Owns: expansion, ids and fingerprints. Must not know: files, settings, the run.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from runner.errors import ManifestError

from .fields import (
    JOB_KEYS,
    SEEDREAM_4_5,
    SEEDREAM_FIELDS,
    FieldError,
    check_field,
    check_json,
    complete_input,
    max_images,
    timing_kind,
)
from .messages import KeyPath, Where, show, unknown_message

__all__ = ["Job", "JobSpec"]

_MAX_VARIANTS = 10_000
_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work: a final API ``input`` under a stable id."""

    id: str
    input: dict[str, Any]
    meta: dict[str, Any]  # free-form, copied to results
    fingerprint: str  # sha256 of the canonical JSON of ``input``; a change means "run again"
    where: str  # "campaign.yaml:14: jobs[3]" or "prompts.jsonl:17", for messages

    @property
    def max_images(self) -> int:
        """The most images this job can produce (and be billed for)."""
        return max_images(self.input)

    @property
    def timing_kind(self) -> Hashable:
        """Jobs of one kind take alike long (:func:`runner.manifest.fields.timing_kind`)."""
        return timing_kind(self.input)


def _suffixed(base: str, suffixes: list[str]) -> str:
    """``hero`` + ``16-9`` -> ``hero.16-9``, kept within 128 characters (and still unique)."""
    full = ".".join([base, *suffixes])
    if len(full) > 128:
        full = full[:119] + "-" + hashlib.sha256(full.encode()).hexdigest()[:8]
    return full


def _matrix_where(where: Where, key: str, index: int, path: KeyPath) -> str:
    # A field error's path starts with the field's name; below matrix it is key[index].
    return where(("matrix", key, index, *path[1:]))


def _conflict(key: str, axis_at: str | None) -> str:
    """Why a job may not set ``key``: its matrix (the campaign's, whose axis is at
    ``axis_at``, or the job's own when None) varies it."""
    if axis_at is None:
        return f"{key} is set here and also varied by this job's own matrix; remove one of them"
    return (
        f"{key} is varied by the campaign's matrix ({axis_at}), so a job cannot also set "
        f"it: remove {key} from this job, or give the job its own matrix (matrix: "
        f"{{{key}: [...]}} with the values it needs, or matrix: {{}} for none), which "
        "replaces the campaign's"
    )


def _suffix(value: object, canon: bytes) -> str:
    text = value if isinstance(value, str) else canon.decode()
    return _ID_UNSAFE.sub("-", text)[:40] or "-"


def _mapping(value: object, key: str, rule: str, where: Where) -> dict[Any, Any]:
    """``value`` (set under ``key``) as a mapping, empty when not set.

    Anything else is a ManifestError at ``key`` whose message ends with ``rule``.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{show(value)} is not allowed; {rule}", where((key,)))
    return value


class JobSpec:
    """How a manifest turns raw job mappings into :class:`Job` objects.

    ``where`` (for ``defaults``/``matrix``) maps key paths from the manifest's root.
    """

    def __init__(self, model: str, defaults: object, matrix: object, where: Where) -> None:
        self.model = model
        self.defaults = self._parse_defaults(defaults, where)
        self.matrix = self._parse_matrix(matrix, where)
        #: where each axis of the campaign's matrix was written, for messages
        self._matrix_at: dict[str, str] | None = {
            key: where(("matrix", key)) for key, _ in self.matrix
        }

    def expand(self, raw: object, label: str, where: Where) -> list[Job]:
        """The jobs one raw entry stands for; ``where`` maps key paths below the entry."""
        if not isinstance(raw, dict):
            raise ManifestError(
                f"{show(raw)} is not a job; use a mapping with at least a prompt", where(())
            )
        job_id: str | None = None
        meta: dict[str, Any] = {}
        own: dict[str, Any] = {}
        matrix, matrix_at = self.matrix, self._matrix_at
        model = self.model
        for key, value in raw.items():
            if key == "id":
                job_id = self._parse_id(value, where)
            elif key == "meta":
                meta = self._parse_meta(value, where)
            elif key == "matrix":
                matrix, matrix_at = self._parse_matrix(value, where), None
            elif isinstance(key, str):
                try:  # inline rather than self._check: this is the per-line hot path
                    check_field(model, key, value)
                except FieldError as exc:
                    raise ManifestError(exc.message, where(exc.path)) from None
                own[key] = value
            else:
                raise ManifestError(f"key {show(key)} must be a field name", where(()))
        fields = {**self.defaults, **own} if self.defaults else own
        if not matrix:
            return [self._job(fields, job_id, meta, label, where)]
        for key, _ in matrix:
            if key in own:
                at = matrix_at[key] if matrix_at is not None else None
                raise ManifestError(_conflict(key, at), where((key,)))
        jobs = []
        for combo in itertools.product(*(values for _, values in matrix)):
            variant = dict(fields)
            for (key, _), (value, _) in zip(matrix, combo, strict=True):
                variant[key] = value
            variant_id = job_id and _suffixed(job_id, [suffix for _, suffix in combo])
            jobs.append(self._job(variant, variant_id, meta, label, where))
        return jobs

    def _job(
        self, fields: dict[str, Any], job_id: str | None, meta: dict[str, Any], label: str,
        where: Where,
    ) -> Job:  # fmt: skip
        try:
            final = complete_input(self.model, fields)
            canon = orjson.dumps(final, option=orjson.OPT_SORT_KEYS)
        except FieldError as exc:
            raise ManifestError(exc.message, where(exc.path)) from None
        except orjson.JSONEncodeError as exc:
            raise ManifestError(f"input cannot be written as JSON ({exc})", where(())) from None
        fingerprint = hashlib.sha256(canon).hexdigest()
        # Derived ids depend on the final input only: stable across runs and other lines.
        return Job(job_id or "j" + fingerprint[:16], final, meta, fingerprint, label)

    def _check(
        self, name: str, value: object, where: Where, prefix: KeyPath,
        extra: Iterable[str],
    ) -> None:  # fmt: skip
        try:
            check_field(self.model, name, value, extra)
        except FieldError as exc:
            raise ManifestError(exc.message, where((*prefix, *exc.path))) from None

    @staticmethod
    def _parse_id(value: object, where: Where) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not _ID.fullmatch(value) or value in (".", ".."):
            raise ManifestError(
                f"{show(value)} is not allowed; use 1-128 characters of A-Z a-z 0-9 . _ - "
                "(not . or ..)",
                where(("id",)),
            )
        return value

    @staticmethod
    def _parse_meta(value: object, where: Where) -> dict[str, Any]:
        value = _mapping(value, "meta", "meta must be a mapping", where)
        try:
            check_json(value, ("meta",))
        except FieldError as exc:
            raise ManifestError(exc.message, where(exc.path)) from None
        return value

    def _parse_defaults(self, value: object, where: Where) -> dict[str, Any]:
        rule = "defaults must be a mapping of input fields (e.g. resolution: 2K)"
        value = _mapping(value, "defaults", rule, where)
        for key, item in value.items():
            if key in JOB_KEYS:
                raise ManifestError(
                    f"{key} cannot have a default; set it on each job", where(("defaults", key))
                )
            if not isinstance(key, str):
                raise ManifestError(f"key {show(key)} must be a field name", where(("defaults",)))
            self._check(key, item, where, ("defaults",), ())
        return dict(value)

    def _parse_matrix(self, value: object, where: Where) -> list[tuple[str, list[Any]]]:
        rule = (
            "matrix must map input fields to lists of values (e.g. aspect_ratio: ['1:1', '16:9'])"
        )
        value = _mapping(value, "matrix", rule, where)
        axes: list[tuple[str, list[Any]]] = []
        variants = 1
        for key, values in value.items():
            if not isinstance(key, str) or key in JOB_KEYS:
                raise ManifestError(
                    f"{show(key)} cannot vary; matrix keys are input fields", where(("matrix",))
                )
            if self.model == SEEDREAM_4_5 and key not in SEEDREAM_FIELDS:
                raise ManifestError(
                    unknown_message(key, SEEDREAM_FIELDS, "field"), where(("matrix", key))
                )
            if not isinstance(values, list) or not values:
                raise ManifestError(
                    f"{show(values)} is not allowed; use a non-empty list of {key} values",
                    where(("matrix", key)),
                )
            seen: set[bytes] = set()
            axis = []
            for i, item in enumerate(values):
                self._check(key, item, functools.partial(_matrix_where, where, key, i), (), ())
                try:
                    canon = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
                except orjson.JSONEncodeError as exc:
                    raise ManifestError(f"not JSON ({exc})", where(("matrix", key, i))) from None
                if canon in seen:
                    raise ManifestError(f"{show(item)} is listed twice", where(("matrix", key, i)))
                seen.add(canon)
                axis.append((item, _suffix(item, canon)))
            variants *= len(axis)
            if variants > _MAX_VARIANTS:
                raise ManifestError(
                    f"expands every job into more than {_MAX_VARIANTS} variants; split it up",
                    where(("matrix",)),
                )
            axes.append((key, axis))
        return axes
