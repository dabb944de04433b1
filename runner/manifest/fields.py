"""What a job's ``input`` may hold: each field checked on its own, then the whole input.

Field rules for ``seedream-4-5`` (the API notes, ``api/apixo.md``): ``prompt`` required,
1-5000 characters, not blank; ``mode`` text-to-image | image-to-image, filled in as
image-to-image when ``image_urls`` is given (image-to-image needs them, text-to-image must
not have them); ``image_urls`` 1-14 http(s) URLs, each naming a JPG, PNG or WebP file by
the extension of its path's last segment (``.jpg``/``.jpeg``/``.png``/``.webp``, any case)
or having no extension there (a dynamic URL such as ``/render?id=7``: the API takes those,
and only fetching can tell; see :mod:`runner.api.refcheck`); ``max_images`` an integer
1-10, filled in as 1 (the API requires it); ``resolution`` 2K | 4K; ``aspect_ratio`` one of
:data:`ASPECT_RATIOS`; ``sequential_image_generation`` disabled | auto. Unknown fields are
an error. Any other model takes any field and passes it through unchanged, provided it is
plain JSON; ``prompt`` (a non-empty string) is still required, and ``max_images``, when
given, must be a positive integer because image counts and budgets are computed from it.

Problems raise :class:`FieldError` with a path relative to the job; the caller turns it
into a :class:`~runner.errors.ManifestError` at the place the field was written.

Owns: everything the runner knows of the model's fields, including what the rest of
the runner reads from a final input (:func:`resolution`, :func:`timing_kind`, ...).
Must not know: where a field was written (the caller names the place), the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .messages import show, unknown_message

__all__ = [
    "ASPECT_RATIOS",
    "IMAGE_EXTENSIONS",
    "JOB_KEYS",
    "SEEDREAM_4_5",
    "SEEDREAM_FIELDS",
    "FieldError",
    "FieldPath",
    "aspect_ratio",
    "check_field",
    "check_json",
    "complete_input",
    "image_extension",
    "is_http_url",
    "max_images",
    "resolution",
    "timing_kind",
]

SEEDREAM_4_5 = "seedream-4-5"
MODES = ("text-to-image", "image-to-image")
RESOLUTIONS = ("2K", "4K")
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "4:3", "3:4", "9:16", "16:9", "21:9")
SEQUENTIAL = ("disabled", "auto")
PROMPT_MAX = 5000
IMAGE_URLS_MAX = 14  # the model page's figure; another page says 10
#: what the API reads from a reference image: JPG, PNG or WebP, by the URL's extension
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp"})
MAX_IMAGES_MAX = 10
#: Keys of a job that are not part of ``input`` (``matrix``: the job's own, see jobspec).
JOB_KEYS = ("id", "meta", "matrix")
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

FieldPath = tuple[str | int, ...]


class FieldError(Exception):
    """A job field is wrong. ``path`` is relative to the job; ``message`` says what is allowed."""

    def __init__(self, message: str, path: FieldPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


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
        ext = image_extension(url)
        if ext is not None and ext.lower() not in IMAGE_EXTENSIONS:
            named = f"names a .{ext} file" if ext else "ends in a dot"
            raise FieldError(
                f"{show(url)} {named}; the API takes JPG, PNG or WebP reference images: "
                "link a .jpg, .jpeg, .png or .webp file (a path whose last segment has no "
                "extension is taken too)",
                ("image_urls", i),
            )


def image_extension(url: str) -> str | None:
    """The extension of the last segment of ``url``'s path (``"JPG"`` for ``/a/b.JPG?x=1``),
    ``""`` for a name ending in a dot, None when that segment has no dot at all."""
    last = urlsplit(url).path.rsplit("/", 1)[-1]
    return last.rsplit(".", 1)[1] if "." in last else None


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


# -- what the rest of the runner reads from a final input -------------------------------


def max_images(inp: Mapping[str, Any]) -> int:
    """The most images a task of this input can make (and be billed for)."""
    value = inp.get("max_images", 1)
    return value if isinstance(value, int) else 1


def resolution(inp: Mapping[str, Any]) -> str:
    """The resolution the API works at: 2K, its default, when the input does not say."""
    return str(inp.get("resolution", "2K"))


def aspect_ratio(inp: Mapping[str, Any]) -> str:
    """The aspect ratio asked for; ``unset`` when the input leaves it to the model."""
    return str(inp.get("aspect_ratio", "unset"))


def timing_kind(inp: Mapping[str, Any]) -> Hashable:
    """What sets how long a task takes: tasks of one kind share what is learned of their
    completion times (:mod:`runner.run.completion`)."""
    return (inp.get("resolution", "2K"), max_images(inp), inp.get("sequential_image_generation"))
