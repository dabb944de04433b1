"""The manifest's settings: their dataclasses and defaults, how each key is checked, and
the CLI options that override them.

Every settings key is optional; a missing or null key keeps the dataclass default. Unknown
keys, wrong types and out-of-range values raise :class:`~runner.errors.ManifestError`
naming the key path (with its line) and saying what is allowed. CLI overrides are checked
the same way and their errors name the option (``--concurrency``). Durations are parsed by
:mod:`runner.manifest.durations`.

Owns: every settings key, its default and its check. Must not know: how a run uses
them, output file names (:mod:`runner.manifest.naming`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.errors import ManifestError

from .durations import parse_duration
from .fields import is_http_url
from .messages import KeyPath, Where, format_path, show, unknown_message
from .naming import Output, check_template

__all__ = [
    "ApiSettings",
    "Budget",
    "Limits",
    "Polling",
    "Retry",
    "Section",
    "check_path",
    "read_settings",
]

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
    #: how long the API keeps a task and its results (15 days on the Seedream 4.5 page);
    #: a task it does not know (404) is lost only once older than this
    retention_s: float = 15 * 86400.0

    @property
    def embedded(self) -> bool:
        """True when the built-in simulator stands in for the API."""
        return self.base_url == "embedded"

    @property
    def time_scale(self) -> float:
        """How fast the API's clock runs against real time: the embedded simulator's
        ``time_scale``, else 1. What the runner times to the API (the polling recipe,
        pauses before a download is tried again, webhook silence) is scaled by it."""
        return self.sim_time_scale if self.embedded else 1.0


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
    #: ``adaptive``: polls go where completion times (learned, and seeded from the
    #: ledger) say they pay; ``fixed``: every task follows the recipe above, under the
    #: same request budget
    schedule: str = "adaptive"


@dataclass(frozen=True, slots=True)
class Retry:
    """What may be tried again, and how often (the outcome policy, ``runner.api.outcome``,
    says what is worth trying again)."""

    #: tries per HTTP request (a poll, a download, a submission that certainly never left)
    #: on transient errors, within 10 minutes; 429s to submissions do not count
    attempts: int = 8
    #: resubmissions of a job whose task failed with a retryable failCode
    failed_tasks: int = 2
    request_timeout_s: float = 30.0  # an API answer slower than this is given up on
    #: submissions of one job (in one run) whose outcome cannot be known (5xx, timeout or
    #: reset after sending, an unreadable answer) before the job fails as UNCERTAIN
    uncertain: int = 3
    #: how long a submission may wait for a slot under the API's live-task limit (429s)
    #: before it is left pending for a later run
    slot_wait_s: float = 1800.0


@dataclass(frozen=True, slots=True)
class Budget:
    max_images: int | None = None
    max_cost: float | None = None
    price_per_image: float = 0.04


class Section:
    """One mapping of settings: unknown keys rejected, values checked where they are.

    ``locate`` maps key paths from the manifest's root to places for messages.
    """

    def __init__(
        self, locate: Where, data: object, path: KeyPath, allowed: tuple[str, ...]
    ) -> None:
        self.locate, self.path = locate, path
        if data is None:  # "api:" with nothing under it means the defaults
            data = {}
        if not isinstance(data, dict):
            what = format_path(path) if path else "the manifest"
            raise ManifestError(
                f"{what} must be a mapping with keys: {', '.join(allowed)}", locate(path)
            )
        for key in data:
            if key not in allowed:
                at = (*path, key) if isinstance(key, str) else path
                raise ManifestError(unknown_message(key, allowed), locate(at))
        self.data: dict[Any, Any] = data

    def where(self, key: str) -> str:
        return self.locate((*self.path, key))

    def get(self, key: str, check: Check) -> Any:
        """The checked value, or None when it is not set (null counts as not set)."""
        value = self.data.get(key)
        return None if value is None else check(value, self.where(key))

    def sub(self, key: str, allowed: tuple[str, ...]) -> Section:
        return Section(self.locate, self.data.get(key), (*self.path, key), allowed)

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
        ok = _local(value)
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


check_path = _rule(
    lambda v: isinstance(v, str) and v != "" and "\0" not in v,
    "a path, relative to the manifest's folder or absolute",
)


_API: dict[str, tuple[str, Check]] = {
    "base_url": ("base_url", _base_url),
    "key_env": ("key_env", _matching(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name")),
    "model": ("model", _matching(r"[A-Za-z0-9._-]+", "a model name such as seedream-4-5")),
    "provider": ("provider", _choice("auto", "value", "official")),
    "mode": ("mode", _choice("poll", "callback")),
    "retention": ("retention_s", _duration(positive=True)),
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
    "schedule": ("schedule", _choice("adaptive", "fixed")),
}
_RETRY: dict[str, tuple[str, Check]] = {
    "attempts": ("attempts", _int(1, 100)),
    "failed_tasks": ("failed_tasks", _int(0, 20)),
    "request_timeout": ("request_timeout_s", _duration(positive=True)),
    "uncertain": ("uncertain", _int(0, 100)),
    "slot_wait": ("slot_wait_s", _duration(positive=False)),
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


def read_settings(
    root: Section, source: Path, display: str, overrides: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The campaign's name and its settings, by part (``api``, ``limits``, ``polling``,
    ``retry``, ``budget``, ``output``), checked and with the CLI ``overrides`` applied.

    ``source`` is the manifest (``display``: as the user named it). Its stem names a campaign
    without ``name``; a relative ``output.dir`` resolves against its folder.
    """
    name = root.get("name", _name) or _name(source.stem, display)
    parts = _parts(root)
    out = root.sub("output", ("dir", "path"))
    out_dir, template = out.get("dir", check_path), out.get("path", check_template)
    folder = source.parent
    parts["output"] = Output(
        dir=Path(os.path.normpath(folder / out_dir)) if out_dir else folder / "out" / name,
        **({"path_template": template} if template else {}),
    )
    _apply_overrides(parts, overrides)
    api: ApiSettings = parts["api"]
    if api.mode == "callback" and api.callback_public_url is None and not _local(api.base_url):
        # Only an API on this machine (the simulator) can reach the receiver's own address.
        raise ManifestError(
            "mode callback needs api.callback.public_url (an https:// URL the API can reach)",
            root.sub("api", (*_API, "callback", "simulator")).where("mode"),
        )
    return name, parts


def _local(base_url: str) -> bool:
    """The API is the embedded simulator or listens on this machine."""
    if base_url == "embedded":
        return True
    host = base_url.split("/")[2].rsplit(":", 1)[0] if "//" in base_url else ""
    return host in ("127.0.0.1", "localhost", "[::1]")


def _parts(root: Section) -> dict[str, Any]:
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
