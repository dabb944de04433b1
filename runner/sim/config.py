"""The simulator's knobs: one mutable dataclass, :class:`SimConfig`.

Contract:

* Every field has a default; the defaults mimic the documented API (10,000 requests per
  minute, 1,000 live tasks, 2K in 25-35 s, 4K in 40-55 s, URLs valid 15 days, the Seedream
  4.5 page's figure) with no faults.
* Durations are *simulated* seconds, multiplied by ``time_scale`` when used, except the
  few marked REAL in their help text (``rate_period_s``, ``retry_after_s``, ``slow_s``):
  those govern how a client paces itself against the server's own clock and are not scaled.
* The instance is mutable and read on every request, so a change takes effect on the next
  request. :meth:`SimConfig.update` applies a JSON-like mapping with full checking (it is
  what ``POST /_sim/config`` calls); plain attribute assignment is for trusted test code.
* The help text of each field lives in its metadata: the CLI and the README are derived
  from it, so one place describes a knob.
* ``profile`` reshapes the generation time drawn from ``gen_2k_s``/``gen_4k_s`` (the
  constants below; the pending time is never reshaped): ``docs`` draws exactly as the
  ranges say, the others model days unlike the API page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# How a field's value is checked and converted from JSON or the command line.
# prob: float in [0, 1]; float/int: non-negative number; range: [low, high] pair;
# delays: list of non-negative numbers; optint/optstr: value or null; bool;
# choice: one of the strings in CHOICES[name].
_KINDS = ("float", "int", "prob", "range", "delays", "optint", "optstr", "bool", "choice")


def _knob(default: Any, kind: str, help_text: str) -> Any:
    assert kind in _KINDS
    return field(default=default, metadata={"kind": kind, "help": help_text})


def _prob(event: str) -> Any:
    """A fault knob: the probability of ``event``, off (0) by default."""
    return _knob(0.0, "prob", f"probability {event}")


# The duration profiles. Each multiplies the generation time drawn uniformly from the
# resolution's range (gen_2k_s or gen_4k_s); the figures in brackets are those of the
# default ranges, 2K 25-35 s and 4K 40-55 s, before time_scale.
#: ``slow``: every task takes this many times as long (2K 50-70 s, 4K 80-110 s).
SLOW_FACTOR = 2.0
#: ``mixture``: one kind of task, two populations drawn per task: this share is fast
#: (x0.5: 2K 12.5-17.5 s, 4K 20-27.5 s), the rest slow (x1.2: 2K 30-42 s, 4K 48-66 s).
MIXTURE_FAST_SHARE = 0.5
MIXTURE_FAST_FACTOR = 0.5
MIXTURE_SLOW_FACTOR = 1.2
#: ``drift``: tasks created ``drift_after_s`` or more after the profile took effect take
#: this many times as long (2K 40-56 s, 4K 64-88 s); the earlier ones as the docs say.
DRIFT_FACTOR = 1.6
#: ``stragglers``: this share of tasks takes 3-5 times as long (factor drawn uniformly).
STRAGGLER_SHARE = 0.02
STRAGGLER_FACTOR = (3.0, 5.0)
PROFILES = ("docs", "slow", "mixture", "drift", "stragglers")
_PROFILE_HELP = (
    "how generation times are drawn from gen_2k_s/gen_4k_s (pending_s unchanged): docs, as"
    " the ranges say (uniform); slow, twice as long (2K 50-70 s, 4K 80-110 s); mixture,"
    " half the tasks fast at x0.5 (2K 12.5-17.5 s, 4K 20-27.5 s) and half slow at x1.2"
    " (2K 30-42 s, 4K 48-66 s), drawn per task; drift, as the docs for the tasks created"
    " in the first drift_after_s after the server started or profile was last set, x1.6"
    " after (2K 40-56 s, 4K 64-88 s); stragglers, as the docs but 2 % of the tasks take"
    " 3-5 times as long"
)

#: The malformed answers of ``p_hostile``. ``task_id`` applies to submissions (the task is
#: created, the answer names a path instead of its id); the others to status answers of
#: finished tasks.
HOSTILE_MODES = (
    "task_id",
    "not_json",
    "data_not_object",
    "no_state",
    "state_not_string",
    "result_not_string",
    "result_not_json",
    "no_result_urls",
    "url_file_scheme",
    "url_ftp_scheme",
    "url_traversal",
    "url_not_string",
    "gigantic",
    "other_task",
)


#: The allowed values of each field of kind ``choice``.
CHOICES: dict[str, tuple[str, ...]] = {"profile": PROFILES}


@dataclass
class SimConfig:
    """Every knob of the simulator. Mutable: changes apply from the next request."""

    time_scale: float = _knob(
        1.0, "float", "multiplier applied to every simulated duration (0.01 = 100x faster)"
    )
    api_key: str | None = _knob(
        None, "optstr", "the only Bearer token accepted; unset: any non-empty token"
    )
    rate: int = _knob(10000, "int", "requests allowed per key in any window of rate_period_s")
    rate_period_s: float = _knob(
        60.0, "float", "REAL seconds of the sliding request window (not scaled)"
    )
    concurrency: int = _knob(1000, "int", "live (pending or processing) tasks allowed per key")
    pending_s: tuple[float, float] = _knob(
        (1.0, 3.0), "range", "time a task spends pending before processing (low high)"
    )
    gen_2k_s: tuple[float, float] = _knob(
        (25.0, 35.0), "range", "generation time at 2K and for the other models (low high)"
    )
    gen_4k_s: tuple[float, float] = _knob((40.0, 55.0), "range", "generation time at 4K")
    profile: str = _knob("docs", "choice", _PROFILE_HELP)
    drift_after_s: float = _knob(
        90.0,
        "float",
        "profile drift: tasks created this long after the server started or profile was last"
        " set take 1.6 times as long",
    )
    url_ttl_s: float = _knob(
        1_296_000.0,
        "float",
        "a result URL answers 410 this long after the status answer or webhook that handed it"
        " out; asking for the status again gives fresh URLs",
    )
    retention_s: float = _knob(
        1_296_000.0,
        "float",
        "a finished task is kept this long after completion; then its status answers 404"
        " and its file URLs 410",
    )
    image_bytes: int = _knob(
        16384,
        "int",
        "size of each generated 2K PNG in bytes, 4x at 4K (at least ~1 KB; smaller gives the"
        " bare picture)",
    )
    retry_after_s: float = _knob(
        1.0, "float", "REAL seconds sent in Retry-After on every 429 (may be fractional)"
    )
    send_retry_after: bool = _knob(True, "bool", "send the Retry-After header on 429")
    p_429: float = _prob("an API request gets a spurious 429")
    p_5xx: float = _prob("an API request gets a 500/502/503/504")
    p_reset: float = _prob("an API request's connection is reset before anything happens")
    p_reset_after: float = _prob("a submission creates its task, then resets the connection")
    p_5xx_after_create: float = _prob(
        "a submission creates its task (billed, counted), then answers 500/502/503/504"
        " instead of the taskId"
    )
    p_slow: float = _prob("an API request waits slow_s before answering")
    slow_s: float = _knob(5.0, "float", "REAL seconds of delay of a slow answer (not scaled)")
    p_truncate: float = _prob("a download closes after about half of its body")
    p_corrupt: float = _prob("a download serves wrong bytes of the right length")
    p_html: float = _prob("a download answers 200 with an HTML error page (text/html)")
    p_wrong_type: float = _prob("a download serves the right image as text/plain")
    p_oversize: float = _prob("a download announces a 1 GiB body, sends a little, closes")
    p_hostile: float = _prob(
        "an answer is malformed: a finished task's status, or a submission's taskId"
    )
    hostile: str | None = _knob(
        None,
        "optstr",
        f"which malformation p_hostile makes: {', '.join(HOSTILE_MODES)}; unset: any",
    )
    bad_status_first: int = _knob(
        0,
        "int",
        "the first N status requests of every task get an unreadable 200 (alternately not"
        " JSON, and an envelope without data); later ones are correct",
    )
    p_fail: float = _prob("a task fails with a retryable failCode (processing class)")
    p_stuck: float = _prob("a task stays processing forever")
    foreign_live: int = _knob(
        0,
        "int",
        "live-task slots of every key held by another client: submissions get 429"
        " (concurrency limit) once the key's own live tasks reach concurrency minus N",
    )
    foreign_hold_s: float = _knob(
        0.0,
        "float",
        "the foreign_live slots are released this long after the server started or either"
        " foreign_* knob last changed (through /_sim/config, or noticed at the next"
        " submission); 0: held forever",
    )
    credits: int | None = _knob(
        None, "optint", "remaining balance in images; unset: unlimited (403 when exhausted)"
    )
    callback_timeout_s: float = _knob(
        30.0, "float", "a webhook receiver must answer 200 within this time"
    )
    callback_retry_delays_s: tuple[float, ...] = _knob(
        (30.0, 60.0, 120.0), "delays", "delays before each webhook retry (one per retry)"
    )
    p_cb_duplicate: float = _prob("a webhook is delivered twice")
    p_cb_drop: float = _prob("a webhook is never even attempted")
    seed: int | None = _knob(None, "optint", "seed of the random draws, for reproducible runs")

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _check(f.name, f.metadata["kind"], getattr(self, f.name)))

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` (field name -> JSON-like value) all or nothing.

        Raises ``ValueError`` naming the field for an unknown name or a bad value; on error
        nothing is changed.
        """
        kinds = {f.name: f.metadata["kind"] for f in fields(self)}
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in kinds:
                raise ValueError(f"{name}: unknown SimConfig field; known: {', '.join(kinds)}")
            checked[name] = _check(name, kinds[name], value)
        for name, value in checked.items():
            setattr(self, name, value)

    def scaled(self, seconds: float) -> float:
        """Real seconds for ``seconds`` of simulated time."""
        return seconds * self.time_scale

    def to_dict(self) -> dict[str, Any]:
        """The knobs as JSON-ready values (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name}: must not be negative, got {value!r}")
    return float(value)


def _check(name: str, kind: str, value: Any) -> Any:
    """Return ``value`` converted to the field's type, or raise ``ValueError``."""
    if kind == "float":
        return _number(name, value)
    if kind == "prob":
        p = _number(name, value)
        if p > 1:
            raise ValueError(f"{name}: a probability is between 0 and 1, got {value!r}")
        return p
    if kind == "int" or (kind == "optint" and value is not None):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        if value < 0 and name != "seed":
            raise ValueError(f"{name}: must not be negative, got {value!r}")
        return value
    if kind == "optint":
        return None
    if kind == "optstr":
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{name}: expected a non-empty string or null, got {value!r}")
        if name == "hostile" and value is not None and value not in HOSTILE_MODES:
            raise ValueError(f"{name}: one of {', '.join(HOSTILE_MODES)}, got {value!r}")
        return value
    if kind == "choice":
        allowed = CHOICES[name]
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{name}: one of {', '.join(allowed)}, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        return value
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name}: expected a list of numbers, got {value!r}")
    numbers = tuple(_number(name, v) for v in value)
    if kind == "range" and (len(numbers) != 2 or numbers[0] > numbers[1]):
        raise ValueError(f"{name}: expected [low, high] with low <= high, got {value!r}")
    return numbers
