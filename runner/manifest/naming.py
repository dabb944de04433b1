"""Output file names: the ``output`` settings, the path template and its placeholders.

``output.path`` is a template relative to ``output.dir`` (default
:data:`DEFAULT_TEMPLATE`). Its placeholders are :data:`PLACEHOLDERS`, listed here and
nowhere else; :data:`REQUIRED` must all appear, so that no two images share a name.
:func:`check_template` is the manifest's check of a template (the message names the key
and says what is allowed); :func:`image_path` is the only way to name an output file,
and never leaves ``output.dir``.

Owns: what a file is called. Must not know: downloading, the ledger (which records the
name it was given), or the API.
"""

from __future__ import annotations

import functools
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import ManifestError

from .jobspec import Job
from .messages import show

__all__ = [
    "DEFAULT_TEMPLATE",
    "PLACEHOLDERS",
    "REQUIRED",
    "Output",
    "check_template",
    "image_path",
]

#: every placeholder a template may use, and what it stands for
PLACEHOLDERS = {
    "job_id": "the job's id",
    "index": "the image's place among the job's images, from 0 (zero padding allowed)",
    "ext": "png, jpg or webp: what the downloaded image turned out to be",
    "task_id": "the API task that made the image",
}
#: placeholders every template must use: with both, no two images share a name
REQUIRED = ("job_id", "index")
DEFAULT_TEMPLATE = "images/{job_id}/{index}.{ext}"


@dataclass(frozen=True, slots=True)
class Output:
    dir: Path
    path_template: str = DEFAULT_TEMPLATE


def _values(job: Job, index: int, ext: str, task_id: str) -> dict[str, Any]:
    """What each placeholder stands for in the name of image ``index`` of ``job``."""
    return {"job_id": job.id, "index": index, "ext": ext, "task_id": task_id}


def image_path(output: Output, job: Job, index: int, ext: str, task_id: str) -> Path:
    """Where image ``index`` of a job goes. Raises ValueError rather than leave ``output.dir``."""
    values = _values(job, index, ext, task_id)
    for name in _template_fields(output.path_template):
        value = values[name]
        if isinstance(value, str) and (
            value in ("", ".", "..") or any(c in value for c in "/\\\0")
        ):
            raise ValueError(f"{name} {value!r} cannot be part of a file name")
    rel = output.path_template.format(**values)
    base = os.path.normpath(os.path.abspath(output.dir))
    full = os.path.normpath(os.path.join(base, rel))
    # Lexical, not resolve(): a symlink the user placed inside output.dir is their choice.
    if os.path.isabs(rel) or os.path.commonpath([base, full]) != base or full == base:
        raise ValueError(f"{rel!r} would be written outside {base}")
    return Path(full)


@functools.lru_cache(maxsize=16)
def _template_fields(template: str) -> frozenset[str]:
    return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f is not None)


def _allowed() -> str:
    required = " and ".join(f"{{{name}}}" for name in REQUIRED)
    more = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS if name not in REQUIRED)
    return f"the placeholders {required} (also allowed: {more}), e.g. {DEFAULT_TEMPLATE}"


def check_template(value: Any, where: str) -> str:
    """``output.path`` as written: a relative path template that names every image
    apart and stays inside ``output.dir``; else ManifestError at ``where``."""

    def bad(problem: str) -> ManifestError:
        return ManifestError(
            f"{show(value)} {problem}; use a relative path with {_allowed()}", where
        )

    if not isinstance(value, str) or not value or "\0" in value:
        raise bad("is not a path template")
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError:
        raise bad("has unbalanced braces (write {{ or }} for a literal brace)") from None
    used = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            raise bad(f"uses the unknown placeholder {{{name}}}")
        # Only zero padding for {index}: any other format could map two values to one name.
        if conversion or (spec and (name != "index" or not re.fullmatch(r"0?\d{0,2}d?", spec))):
            raise bad(f"formats {{{name}}} in a way that could make names collide")
        used.add(name)
    if not set(REQUIRED) <= used:
        raise bad(
            f"must contain both {' and '.join(f'{{{n}}}' for n in REQUIRED)}, so that files "
            "cannot collide"
        )
    if value.startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", value):
        raise bad("must be relative to output.dir")
    if ".." in re.split(r"[/\\]", value):
        raise bad("must stay inside output.dir (no .. segments)")
    return value
