"""Jobs: what a job's ``input`` may hold, how entries become jobs, and the job list.

Field rules for ``seedream-4-5`` (the API notes, ``api/apixo.md``): ``prompt`` required,
1-5000 characters, not blank; ``mode`` text-to-image | image-to-image, filled in as
image-to-image when ``image_urls`` is given (image-to-image needs them, text-to-image must
not have them); ``image_urls`` 1-14 http(s) URLs; ``max_images`` an integer 1-10, filled in
as 1 (the API requires it); ``resolution`` 2K | 4K; ``aspect_ratio`` one of
:data:`ASPECT_RATIOS`; ``sequential_image_generation`` disabled | auto. Unknown fields are
an error. Any other model takes any field and passes it through unchanged, provided it is
plain JSON; ``prompt`` (a non-empty string) is still required, and ``max_images``, when
given, must be a positive integer because image counts and budgets are computed from it.

:class:`JobSpec` turns one raw entry into final :class:`Job` objects: ``defaults`` merged
under it, expanded over ``matrix`` (except keys the entry sets itself), the id explicit
(suffixed per matrix value, e.g. ``hero.16-9``) or derived from the fingerprint of the
final input (``j`` + 16 hex digits), so it survives edits of other lines.

:class:`JobList` streams a manifest's entries and ``jobs_file`` lines through the spec,
collapses identical jobs and refuses two different jobs under one id.

Every problem raises :class:`~runner.errors.ManifestError` at the place it was written,
given by the caller's ``where`` function (key path -> ``"campaign.yaml:14: jobs[3].prompt"``).
"""

from __future__ import annotations

import codecs
import difflib
import functools
import hashlib
import itertools
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from runner.errors import ManifestError

__all__ = [
    "ASPECT_RATIOS",
    "JOB_KEYS",
    "SEEDREAM_4_5",
    "SEEDREAM_FIELDS",
    "FieldError",
    "Job",
    "JobList",
    "JobSpec",
    "check_field",
    "check_json",
    "complete_input",
    "format_path",
    "is_http_url",
    "show",
    "unknown_message",
]

SEEDREAM_4_5 = "seedream-4-5"
MODES = ("text-to-image", "image-to-image")
RESOLUTIONS = ("2K", "4K")
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "4:3", "3:4", "9:16", "16:9", "21:9")
SEQUENTIAL = ("disabled", "auto")
PROMPT_MAX = 5000
IMAGE_URLS_MAX = 14  # the model page's figure; another page says 10
MAX_IMAGES_MAX = 10
#: Keys of a job that are not part of ``input``.
JOB_KEYS = ("id", "meta")
SEEDREAM_FIELDS = (
    "prompt",
    "mode",
    "image_urls",
    "max_images",
    "resolution",
    "aspect_ratio",
    "sequential_image_generation",
)
# orjson refuses to serialise deeper structures (and Python recursion would not like them).
_MAX_DEPTH = 100
# YAML aliases can make a small file describe a huge value; stop before walking it all.
_MAX_ITEMS = 100_000
_MAX_VARIANTS = 10_000
_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

FieldPath = tuple[str | int, ...]
#: Maps a key path below the manifest's root to a place for messages.
Where = Callable[[tuple[object, ...]], str]


class FieldError(Exception):
    """A job field is wrong. ``path`` is relative to the job; ``message`` says what is allowed."""

    def __init__(self, message: str, path: FieldPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def show(value: object) -> str:
    """A short repr of a user's value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def unknown_message(key: object, allowed: Iterable[str], what: str = "key") -> str:
    """``unknown key 'aspct_ratio' (did you mean 'aspect_ratio'?); allowed: ...``."""
    allowed = list(allowed)
    hint = ""
    if isinstance(key, str):
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    return f"unknown {what} {show(key)}{hint}; allowed: {', '.join(allowed)}"


def is_http_url(value: str) -> bool:
    """True for an absolute http(s) URL with a host and no whitespace."""
    if not value.isprintable() or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. a broken IPv6 literal or port
        return False


def check_json(value: object, path: FieldPath = ()) -> None:
    """Raise FieldError unless ``value`` is plain JSON that orjson writes faithfully.

    Iterative, so deep nesting gives an error instead of a RecursionError. Rejects what YAML
    can produce but JSON cannot hold: dates, bytes, sets, non-string keys, NaN, huge ints.
    """
    stack: list[tuple[object, FieldPath]] = [(value, path)]
    budget = _MAX_ITEMS
    while stack:
        item, where = stack.pop()
        budget -= 1
        if budget < 0:
            raise FieldError(f"holds more than {_MAX_ITEMS} values", path)
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise FieldError("contains a lone surrogate; not valid UTF-8", where) from None
        elif isinstance(item, int):
            if not -(2**63) <= item < 2**64:
                raise FieldError(f"{show(item)} is too large for JSON (64-bit integers)", where)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise FieldError(f"{show(item)} is not allowed; use a finite number", where)
        elif isinstance(item, list | dict):
            if len(where) - len(path) >= _MAX_DEPTH:
                raise FieldError(f"nested more than {_MAX_DEPTH} levels deep", path)
            if isinstance(item, list):
                stack.extend((v, (*where, i)) for i, v in enumerate(item))
            else:
                for k, v in item.items():
                    if not isinstance(k, str):
                        raise FieldError(f"key {show(k)} must be a string", where)
                    stack.append((v, (*where, k)))
        else:
            hint = " (quote dates and times)" if hasattr(item, "isoformat") else ""
            raise FieldError(
                f"{show(item)} is not a JSON value{hint}; use a string, number, boolean, "
                "null, list or mapping",
                where,
            )


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[object], None]:
    def check(value: object) -> None:
        if not isinstance(value, str) or value not in choices:
            raise FieldError(
                f"{show(value)} is not allowed; use one of {', '.join(choices)}", (name,)
            )

    return check


def _check_prompt(value: object) -> None:
    if not isinstance(value, str):
        raise FieldError(
            f"{show(value)} must be a string of 1-{PROMPT_MAX} characters", ("prompt",)
        )
    if not 1 <= len(value) <= PROMPT_MAX or value.isspace():
        raise FieldError(
            f"must be 1-{PROMPT_MAX} characters and not blank (got {len(value)})", ("prompt",)
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a YAML escape
        raise FieldError("contains a lone surrogate; not valid UTF-8", ("prompt",)) from None


def _check_image_urls(value: object) -> None:
    if not isinstance(value, list) or not 1 <= len(value) <= IMAGE_URLS_MAX:
        raise FieldError(
            f"{show(value)} is not allowed; use a list of 1-{IMAGE_URLS_MAX} http(s) URLs",
            ("image_urls",),
        )
    for i, url in enumerate(value):
        if not isinstance(url, str) or not is_http_url(url):
            raise FieldError(f"{show(url)} is not an http(s) URL", ("image_urls", i))


def _check_max_images(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGES_MAX:
        raise FieldError(
            f"{show(value)} is not allowed; use an integer 1-{MAX_IMAGES_MAX}", ("max_images",)
        )


_SEEDREAM_CHECKS: dict[str, Callable[[object], None]] = {
    "prompt": _check_prompt,
    "mode": _choice("mode", MODES),
    "image_urls": _check_image_urls,
    "max_images": _check_max_images,
    "resolution": _choice("resolution", RESOLUTIONS),
    "aspect_ratio": _choice("aspect_ratio", ASPECT_RATIOS),
    "sequential_image_generation": _choice("sequential_image_generation", SEQUENTIAL),
}


def check_field(model: str, name: str, value: object, extra: Iterable[str] = JOB_KEYS) -> None:
    """Check one input field on its own; ``extra`` lists other keys valid where it appears."""
    if model == SEEDREAM_4_5:
        check = _SEEDREAM_CHECKS.get(name)
        if check is None:
            raise FieldError(unknown_message(name, (*extra, *SEEDREAM_FIELDS), "field"), (name,))
        check(value)
        return
    if name == "prompt":
        if not isinstance(value, str) or not value.strip():
            raise FieldError(f"{show(value)} must be a non-empty string", ("prompt",))
    elif name == "max_images" and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**6
    ):
        raise FieldError(f"{show(value)} is not allowed; use a positive integer", ("max_images",))
    check_json(value, (name,))


def complete_input(model: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The final ``input``: fields already checked one by one, now checked together.

    Fills in what the API needs but the job left out (``mode``, ``max_images``).
    """
    if "prompt" not in fields:
        raise FieldError("prompt is required (set it on the job or in defaults)")
    final = dict(fields)
    if model != SEEDREAM_4_5:
        return final
    has_urls = "image_urls" in final
    mode = final.setdefault("mode", "image-to-image" if has_urls else "text-to-image")
    if mode == "image-to-image" and not has_urls:
        raise FieldError(f"mode image-to-image needs image_urls (1-{IMAGE_URLS_MAX} http(s) URLs)")
    if mode == "text-to-image" and has_urls:
        raise FieldError(
            "image_urls is only used by mode image-to-image; remove mode or set it to "
            "image-to-image"
        )
    final.setdefault("max_images", 1)
    return final


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
        value = self.input.get("max_images", 1)
        return value if isinstance(value, int) else 1


def _suffixed(base: str, suffixes: list[str]) -> str:
    """``hero`` + ``16-9`` -> ``hero.16-9``, kept within 128 characters (and still unique)."""
    full = ".".join([base, *suffixes])
    if len(full) > 128:
        full = full[:119] + "-" + hashlib.sha256(full.encode()).hexdigest()[:8]
    return full


def format_path(path: tuple[object, ...]) -> str:
    """``("jobs", 3, "aspect_ratio")`` -> ``jobs[3].aspect_ratio``."""
    out = ""
    for part in path:
        text = str(part) if len(str(part)) <= 60 else str(part)[:57] + "..."
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{text}"
    return out


def _matrix_where(where: Where, key: str, index: int, path: tuple[object, ...]) -> str:
    # A field error's path starts with the field's name; below matrix it is key[index].
    return where(("matrix", key, index, *path[1:]))


def _suffix(value: object, canon: bytes) -> str:
    text = value if isinstance(value, str) else canon.decode()
    return _ID_UNSAFE.sub("-", text)[:40] or "-"


class JobSpec:
    """How a manifest turns raw job mappings into :class:`Job` objects.

    ``where`` (for ``defaults``/``matrix``) maps key paths from the manifest's root.
    """

    def __init__(self, model: str, defaults: object, matrix: object, where: Where) -> None:
        self.model = model
        self.defaults = self._parse_defaults(defaults, where)
        self.matrix = self._parse_matrix(matrix, where)

    def expand(self, raw: object, label: str, where: Where) -> list[Job]:
        """The jobs one raw entry stands for; ``where`` maps key paths below the entry."""
        if not isinstance(raw, dict):
            raise ManifestError(
                f"{show(raw)} is not a job; use a mapping with at least a prompt", where(())
            )
        job_id: str | None = None
        meta: dict[str, Any] = {}
        own: dict[str, Any] = {}
        model = self.model
        for key, value in raw.items():
            if key == "id":
                job_id = self._parse_id(value, where)
            elif key == "meta":
                meta = self._parse_meta(value, where)
            elif isinstance(key, str):
                try:  # inline rather than self._check: this is the per-line hot path
                    check_field(model, key, value)
                except FieldError as exc:
                    raise ManifestError(exc.message, where(exc.path)) from None
                own[key] = value
            else:
                raise ManifestError(f"key {show(key)} must be a field name", where(()))
        fields = {**self.defaults, **own} if self.defaults else own
        # A job that sets a matrix key itself is not expanded over that key.
        axes = [axis for axis in self.matrix if axis[0] not in own]
        if not axes:
            return [self._job(fields, job_id, meta, label, where)]
        jobs = []
        for combo in itertools.product(*(values for _, values in axes)):
            variant = dict(fields)
            for (key, _), (value, _) in zip(axes, combo, strict=True):
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
        self, name: str, value: object, where: Where, prefix: tuple[object, ...],
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
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ManifestError(
                f"{show(value)} is not allowed; meta must be a mapping", where(("meta",))
            )
        try:
            check_json(value, ("meta",))
        except FieldError as exc:
            raise ManifestError(exc.message, where(exc.path)) from None
        return value

    def _parse_defaults(self, value: object, where: Where) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ManifestError(
                f"{show(value)} is not allowed; defaults must be a mapping of input fields "
                "(e.g. resolution: 2K)",
                where(("defaults",)),
            )
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
        if value is None:
            return []
        if not isinstance(value, dict):
            raise ManifestError(
                f"{show(value)} is not allowed; matrix must map input fields to lists of "
                "values (e.g. aspect_ratio: ['1:1', '16:9'])",
                where(("matrix",)),
            )
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


# ----------------------------------------------------------------------------- job list

_MAX_WARNINGS = 20
_ENTRY = 1 << 40  # places: a jobs_file line number, or _ENTRY + index into ``jobs:``
_PLACE_BITS = 41
_PLACE_MASK = (1 << _PLACE_BITS) - 1


class _LineWhere:
    """Key paths below one JSONL line: ``prompts.jsonl:17: aspect_ratio``."""

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, path: tuple[object, ...]) -> str:
        return f"{self.label}: {format_path(path)}" if path else self.label


class JobList:
    """The manifest's jobs in order, ``jobs:`` entries then ``jobs_file`` lines.

    Every pass re-reads the file, so memory does not grow with its length. ``validate``
    remembers, per id, the first place it appeared and a 64-bit fingerprint prefix, packed
    into one int (about 150 bytes a job with the key); ``unique`` yields only those.
    """

    def __init__(
        self, spec: JobSpec, entries: list[object], where: Where, file: Path | None,
        file_display: str, file_where: str,
    ) -> None:  # fmt: skip
        self.spec, self.entries, self.where = spec, entries, where
        self.file, self.file_display, self.file_where = file, file_display, file_where
        self._first: dict[str, int] = {}
        self._stamp: tuple[int, int] | None = None

    def validate(self) -> tuple[int, int, list[str]]:
        """Check every job; return the job count, image count and warnings."""
        first, warnings = self._first, []
        jobs = images = duplicates = 0
        for job, place in self._all():
            packed = int(job.fingerprint[:16], 16) << _PLACE_BITS | place
            earlier = first.get(job.id)
            if earlier is None:
                first[job.id] = packed
                jobs += 1
                images += job.max_images
            elif earlier >> _PLACE_BITS == packed >> _PLACE_BITS:
                duplicates += 1
                if duplicates <= _MAX_WARNINGS:
                    warnings.append(
                        f"{job.where}: the same job as {self._place(earlier)} (id {job.id}); "
                        "it runs once"
                    )
            else:
                raise ManifestError(
                    f"id {job.id!r} is already used by a different job at "
                    f"{self._place(earlier)}; give one of them another id",
                    job.where,
                )
        if duplicates > _MAX_WARNINGS:
            warnings.append(f"{duplicates - _MAX_WARNINGS} more duplicate jobs collapsed")
        return jobs, images, warnings

    def unique(self) -> Iterator[Job]:
        """The jobs ``validate`` counted, in order: each id at its first place only."""
        first = self._first
        for job, place in self._all():
            if first.get(job.id) == int(job.fingerprint[:16], 16) << _PLACE_BITS | place:
                yield job

    def _place(self, packed: int) -> str:
        place = packed & _PLACE_MASK
        if place >= _ENTRY:
            return self.where(("jobs", place - _ENTRY))
        return f"{self.file_display}:{place}"

    def _all(self) -> Iterator[tuple[Job, int]]:
        expand = self.spec.expand
        for i, raw in enumerate(self.entries):
            where = functools.partial(lambda i, path: self.where(("jobs", i, *path)), i)
            for job in expand(raw, self.where(("jobs", i)), where):
                yield job, _ENTRY + i
        if self.file is not None:
            yield from self._lines(self.file)

    def _lines(self, file: Path) -> Iterator[tuple[Job, int]]:
        display, expand = self.file_display, self.spec.expand
        try:
            # Not a FIFO or device: opening one could block, reading one could never end.
            if not stat.S_ISREG(file.stat().st_mode):
                raise ManifestError(f"{display} is not a regular file", self.file_where)
            handle = file.open("rb")
        except OSError as exc:
            raise ManifestError(
                f"cannot read {display}: {exc.strerror or exc}", self.file_where
            ) from None
        with handle:
            info = os.fstat(handle.fileno())
            stamp = (info.st_size, info.st_mtime_ns)
            if self._stamp is None:
                self._stamp = stamp
            elif stamp != self._stamp:  # a later pass must see what validation saw
                raise ManifestError("changed since the manifest was checked; run again", display)
            try:
                for n, line in enumerate(handle, 1):
                    if n == 1 and line.startswith(codecs.BOM_UTF8):
                        line = line[3:]
                    if not line or line.isspace():
                        continue
                    label = f"{display}:{n}"
                    try:
                        raw = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise ManifestError(
                            f"not valid JSON (column {exc.colno}: {exc.msg}); each line must "
                            "be one job object",
                            label,
                        ) from None
                    for job in expand(raw, label, _LineWhere(label)):
                        yield job, n
            except OSError as exc:
                raise ManifestError(f"cannot read: {exc.strerror or exc}", display) from None
