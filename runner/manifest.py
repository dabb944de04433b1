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
  errors name the option (``--concurrency``).
- Jobs (``jobs:`` first, then ``jobs_file`` lines) are expanded and checked by
  :class:`runner.jobspec.JobSpec`. Identical jobs (same id, same fingerprint) collapse into
  the first with a warning; different jobs under one id are an error naming both places.
- Loading streams the job file and keeps only a compact id -> (fingerprint, place) map;
  :meth:`Campaign.jobs` streams it again and yields exactly the jobs validation counted,
  refusing to go on if the file changed in between.
- :func:`image_path` is the only way to name an output file; it never leaves ``output.dir``.
"""

from __future__ import annotations

import functools
import os
import re
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from runner.durations import parse_duration
from runner.errors import ManifestError
from runner.jobspec import Job, JobList, JobSpec, format_path, is_http_url, show, unknown_message

try:  # libyaml is much faster on big campaigns; the pure-Python parser behaves the same
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = [
    "ApiSettings",
    "Budget",
    "Campaign",
    "Job",
    "Limits",
    "Output",
    "Polling",
    "Retry",
    "image_path",
    "load_campaign",
]

KeyPath = tuple[object, ...]
Check = Callable[[Any, str], Any]  # (value, where) -> the value to use, or ManifestError


@dataclass(frozen=True, slots=True)
class ApiSettings:
    base_url: str = "https://api.apixo.ai/api/v1"
    key_env: str = "APIXO_API_KEY"
    model: str = "seedream-4-5"
    provider: str = "auto"
    mode: str = "poll"
    callback_listen: str = "127.0.0.1:8080"
    callback_public_url: str | None = None
    sim_time_scale: float = 0.02

    @property
    def embedded(self) -> bool:
        """True when the built-in simulator stands in for the API."""
        return self.base_url == "embedded"


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int = 1000
    rate: int = 10000
    rate_period_s: float = 60.0
    downloads: int = 32


@dataclass(frozen=True, slots=True)
class Polling:
    initial_delay_s: float = 20.0
    interval_s: float = 3.0
    jitter: float = 0.2
    timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 8
    failed_tasks: int = 2


@dataclass(frozen=True, slots=True)
class Output:
    dir: Path
    path_template: str = "images/{job_id}/{index}.{ext}"


@dataclass(frozen=True, slots=True)
class Budget:
    max_images: int | None = None
    max_cost: float | None = None
    price_per_image: float = 0.04


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

    def jobs(self) -> Iterator[Job]:
        """Yield the final, de-duplicated jobs in manifest order, re-reading the job file."""
        return self._jobs.unique()


def image_path(output: Output, job_id: str, index: int, ext: str, task_id: str) -> Path:
    """Where image ``index`` of a job goes. Raises ValueError rather than leave ``output.dir``."""
    values = {"job_id": job_id, "ext": ext, "task_id": task_id}
    for name in _template_fields(output.path_template) & values.keys():
        value = values[name]
        if value in ("", ".", "..") or any(c in value for c in "/\\\0"):
            raise ValueError(f"{name} {value!r} cannot be part of a file name")
    rel = output.path_template.format(job_id=job_id, index=index, ext=ext, task_id=task_id)
    base = os.path.normpath(os.path.abspath(output.dir))
    full = os.path.normpath(os.path.join(base, rel))
    # Lexical, not resolve(): a symlink the user placed inside output.dir is their choice.
    if os.path.isabs(rel) or os.path.commonpath([base, full]) != base or full == base:
        raise ValueError(f"{rel!r} would be written outside {base}")
    return Path(full)


@functools.lru_cache(maxsize=16)
def _template_fields(template: str) -> frozenset[str]:
    return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f is not None)


def load_campaign(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Campaign:
    """Read, check and expand a manifest; raise ManifestError for anything wrong in it."""
    display = str(path)  # messages name the file as the user wrote it
    source = Path(os.path.abspath(display))
    folder = source.parent
    suffix = source.suffix.lower()
    if suffix in (".yaml", ".yml"):
        doc, data = _read_yaml(source, display)
    elif suffix == ".jsonl":
        doc, data = _Doc(display, None), {}
    else:
        raise ManifestError(
            f"{suffix or 'a file without extension'} is not a manifest; use a .yaml/.yml "
            "campaign or a .jsonl job list",
            display,
        )
    root = _Section(doc, data, (), _TOP_KEYS)
    name = root.get("name", _name) or _name(source.stem, display)
    parts = _settings(root)
    out = root.sub("output", ("dir", "path"))
    out_dir, template = out.get("dir", _path_text), out.get("path", _template)
    parts["output"] = Output(
        dir=Path(os.path.normpath(folder / out_dir)) if out_dir else folder / "out" / name,
        **({"path_template": template} if template else {}),
    )
    _apply_overrides(parts, overrides or {})

    entries = root.data.get("jobs")
    if entries is not None and not isinstance(entries, list):
        raise ManifestError(
            f"{show(entries)} is not allowed; use a list of jobs", root.where("jobs")
        )
    jobs_file, file_display, file_where = None, display, display
    if suffix == ".jsonl":
        jobs_file = source
    elif (text := root.get("jobs_file", _path_text)) is not None:
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


# ---------------------------------------------------------------------------------- YAML


class _Loader(_BaseLoader):
    """Safe YAML, minus YAML 1.1's base-60 numbers: ``aspect_ratio: 16:9`` stays a string."""


def _without_base60() -> None:
    int_tag, float_tag = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
    _Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (int_tag, float_tag)]
        for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
    }
    int_rx = r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
    float_rx = (
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    )
    _Loader.add_implicit_resolver(float_tag, re.compile(float_rx), list("-+0123456789."))
    _Loader.add_implicit_resolver(int_tag, re.compile(int_rx), list("-+0123456789"))


_without_base60()


class _Doc:
    """A parsed YAML file: its name as the user gave it and its node tree, for line numbers."""

    def __init__(self, display: str, root: yaml.Node | None) -> None:
        self.display = display
        self.root = root

    def where(self, path: KeyPath = ()) -> str:
        """``campaign.yaml:14: jobs[3].aspect_ratio``: the deepest line the path reaches."""
        node, line = self.root, None
        if node is not None:
            line = node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                pair = next((kv for kv in node.value if kv[0].value == str(part)), None)
                if pair is None:
                    break
                line, node = pair[0].start_mark.line + 1, pair[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        head = f"{self.display}:{line}" if line else self.display
        return f"{head}: {format_path(path)}" if path else head


def _read_yaml(source: Path, display: str) -> tuple[_Doc, object]:
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest: {exc.strerror or exc}", display) from None
    loader = _Loader(raw)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display}:{mark.line + 1}" if mark else display
        raise ManifestError(f"not valid YAML: {exc.problem or exc.context}", where) from None
    except Exception as exc:  # the parser's own failures on hostile input (bad !!int, depth)
        raise ManifestError(f"not valid YAML: {show(exc)}", display) from None
    finally:
        loader.dispose()
    return _Doc(display, node), data


# ------------------------------------------------------------------------------ settings


class _Section:
    """One mapping of settings: unknown keys rejected, values checked where they are."""

    def __init__(self, doc: _Doc, data: object, path: KeyPath, allowed: tuple[str, ...]) -> None:
        self.doc, self.path = doc, path
        if data is None:  # "api:" with nothing under it means the defaults
            data = {}
        if not isinstance(data, dict):
            what = format_path(path) if path else "the manifest"
            raise ManifestError(
                f"{what} must be a mapping with keys: {', '.join(allowed)}", doc.where(path)
            )
        for key in data:
            if key not in allowed:
                at = (*path, key) if isinstance(key, str) else path
                raise ManifestError(unknown_message(key, allowed), doc.where(at))
        self.data: dict[Any, Any] = data

    def where(self, key: str) -> str:
        return self.doc.where((*self.path, key))

    def get(self, key: str, check: Check) -> Any:
        """The checked value, or None when it is not set (null counts as not set)."""
        value = self.data.get(key)
        return None if value is None else check(value, self.where(key))

    def sub(self, key: str, allowed: tuple[str, ...]) -> _Section:
        return _Section(self.doc, self.data.get(key), (*self.path, key), allowed)

    def build(self, cls: type[Any], fields: Mapping[str, tuple[str, Check]]) -> Any:
        """``cls`` with the keys that are set; the dataclass defaults fill in the rest."""
        kwargs = {attr: self.get(key, check) for key, (attr, check) in fields.items()}
        return cls(**{k: v for k, v in kwargs.items() if v is not None})


def _fail(value: Any, allowed: str, where: str) -> ManifestError:
    return ManifestError(f"{show(value)} is not allowed; use {allowed}", where)


def _rule(ok: Callable[[Any], bool], allowed: str) -> Check:
    def check(value: Any, where: str) -> Any:
        if not ok(value):
            raise _fail(value, allowed, where)
        return value

    return check


def _int(lo: int, hi: int) -> Check:
    allowed = f"an integer {lo}-{hi}" if hi < 10**9 else f"an integer >= {lo}"
    return _rule(lambda v: type(v) is int and lo <= v <= hi, allowed)  # bool is no int here


def _choice(*choices: str) -> Check:
    return _rule(lambda v: isinstance(v, str) and v in choices, f"one of {', '.join(choices)}")


def _matching(pattern: str, allowed: str) -> Check:
    return _rule(lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None, allowed)


def _number(lo: float, hi: float, allowed: str, lo_ok: bool = False, hi_ok: bool = True) -> Check:
    """A finite number between ``lo`` and ``hi``; each end included only when its flag says."""

    def check(value: Any, where: str) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float range
                raise _fail(value, allowed, where) from None
            if (lo < number or (lo_ok and number == lo)) and (
                number < hi or (hi_ok and number == hi)
            ):
                return number
        raise _fail(value, allowed, where)

    return check


def _duration(positive: bool) -> Check:
    def check(value: Any, where: str) -> float:
        seconds = parse_duration(value, where)
        if positive and seconds <= 0:
            raise _fail(value, "a duration above 0", where)
        return seconds

    return check


def _base_url(value: Any, where: str) -> str:
    if value == "embedded":
        return "embedded"
    if not isinstance(value, str) or not is_http_url(value):
        raise _fail(value, "an http(s) URL or the word embedded", where)
    return value.rstrip("/")


def _public_url(value: Any, where: str) -> str:
    ok = isinstance(value, str) and is_http_url(value) and not set("?#") & set(value)
    # Plain http only for a receiver on this machine (tests); real webhooks need https.
    if ok and value.startswith("http://"):
        ok = value.split("/")[2].rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]")
    if not ok:
        raise _fail(
            value,
            "an https:// URL the API can reach, without ? or # "
            "(http://127.0.0.1 or http://localhost only for testing)",
            where,
        )
    return str(value).rstrip("/")


def _listen(value: Any, where: str) -> str:
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    port_ok = port.isascii() and port.isdigit() and int(port) <= 65535
    if not host or not port_ok or not host.isprintable() or " " in host:
        raise _fail(value, "host:port, e.g. 127.0.0.1:8080", where)
    return str(value)


def _name(value: Any, where: str) -> str:
    ok = isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable()
    if not ok or value in (".", "..") or "/" in value or "\\" in value:
        raise _fail(
            value, "1-128 printable characters without / or \\ (it names out/<name>)", where
        )
    return str(value)


_path_text = _rule(
    lambda v: isinstance(v, str) and v != "" and "\0" not in v,
    "a path, relative to the manifest's folder or absolute",
)


def _template(value: Any, where: str) -> str:
    def bad(problem: str) -> ManifestError:
        return ManifestError(
            f"{show(value)} {problem}; use a relative path with the placeholders {{job_id}} "
            "and {index} (also allowed: {ext}, {task_id}), e.g. images/{job_id}/{index}.{ext}",
            where,
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
        if name not in ("job_id", "index", "ext", "task_id"):
            raise bad(f"uses the unknown placeholder {{{name}}}")
        # Only zero padding for {index}: any other format could map two values to one name.
        if conversion or (spec and (name != "index" or not re.fullmatch(r"0?\d{0,2}d?", spec))):
            raise bad(f"formats {{{name}}} in a way that could make names collide")
        used.add(name)
    if not {"job_id", "index"} <= used:
        raise bad("must contain both {job_id} and {index}, so that files cannot collide")
    if value.startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", value):
        raise bad("must be relative to output.dir")
    if ".." in re.split(r"[/\\]", value):
        raise bad("must stay inside output.dir (no .. segments)")
    return value


_TOP_KEYS = (
    "name", "api", "limits", "polling", "retry", "defaults", "matrix", "jobs", "jobs_file",
    "output", "budget",
)  # fmt: skip
_API: dict[str, tuple[str, Check]] = {
    "base_url": ("base_url", _base_url),
    "key_env": ("key_env", _matching(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name")),
    "model": ("model", _matching(r"[A-Za-z0-9._-]+", "a model name such as seedream-4-5")),
    "provider": ("provider", _choice("auto", "value", "official")),
    "mode": ("mode", _choice("poll", "callback")),
}
_LIMITS: dict[str, tuple[str, Check]] = {
    # 1000 is the API's own ceiling on live tasks per key.
    "concurrency": ("concurrency", _int(1, 1000)),
    "rate": ("rate", _int(1, 10**9)),
    "rate_period": ("rate_period_s", _duration(positive=True)),
    "downloads": ("downloads", _int(1, 256)),
}
_POLLING: dict[str, tuple[str, Check]] = {
    "initial_delay": ("initial_delay_s", _duration(positive=False)),
    "interval": ("interval_s", _duration(positive=True)),
    "jitter": ("jitter", _number(0, 1, "a fraction from 0 up to (not including) 1", True, False)),
    "timeout": ("timeout_s", _duration(positive=True)),
}
_RETRY: dict[str, tuple[str, Check]] = {
    "attempts": ("attempts", _int(1, 100)),
    "failed_tasks": ("failed_tasks", _int(0, 20)),
}
_BUDGET: dict[str, tuple[str, Check]] = {
    "max_images": ("max_images", _int(1, 10**15)),
    "max_cost": ("max_cost", _number(0, 1e12, "an amount above 0")),
    "price_per_image": ("price_per_image", _number(0, 1e6, "a price above 0")),
}
# CLI option key -> (option as typed, settings part, dataclass field, check)
_OVERRIDES: dict[str, tuple[str, str, str, Check]] = {
    "base_url": ("--base-url", "api", "base_url", _base_url),
    "concurrency": ("--concurrency", "limits", "concurrency", _LIMITS["concurrency"][1]),
    "rate": ("--rate", "limits", "rate", _LIMITS["rate"][1]),
    "rate_period": ("--rate-period", "limits", "rate_period_s", _LIMITS["rate_period"][1]),
    "downloads": ("--downloads", "limits", "downloads", _LIMITS["downloads"][1]),
}


def _settings(root: _Section) -> dict[str, Any]:
    api = root.sub("api", (*_API, "callback", "simulator"))
    callback = api.sub("callback", ("listen", "public_url"))
    simulator = api.sub("simulator", ("time_scale",))
    nested = {
        "callback_listen": callback.get("listen", _listen),
        "callback_public_url": callback.get("public_url", _public_url),
        "sim_time_scale": simulator.get("time_scale", _number(0, 1e6, "a number above 0")),
    }
    settings = replace(
        api.build(ApiSettings, _API), **{k: v for k, v in nested.items() if v is not None}
    )
    if settings.mode == "callback" and settings.callback_public_url is None:
        raise ManifestError(
            "mode callback needs api.callback.public_url (an https:// URL the API can reach)",
            api.where("mode"),
        )
    return {
        "api": settings,
        "limits": root.sub("limits", tuple(_LIMITS)).build(Limits, _LIMITS),
        "polling": root.sub("polling", tuple(_POLLING)).build(Polling, _POLLING),
        "retry": root.sub("retry", tuple(_RETRY)).build(Retry, _RETRY),
        "budget": root.sub("budget", tuple(_BUDGET)).build(Budget, _BUDGET),
    }


def _apply_overrides(parts: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if key not in _OVERRIDES:
            raise ManifestError(unknown_message(key, _OVERRIDES, "option"))
        if value is None:  # the option was not given
            continue
        option, part, attr, check = _OVERRIDES[key]
        if isinstance(value, str) and key != "base_url" and value.isascii() and value.isdigit():
            value = int(value)
        parts[part] = replace(parts[part], **{attr: check(value, option)})
