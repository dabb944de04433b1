"""Durations, parsed in exactly one place.

A duration is either a number of seconds (``20``, ``1.5``) or a string made of one or more
``<number><unit>`` parts, where the unit is ``ms``, ``s``, ``m``, ``h`` or ``d``
(``"250ms"``, ``"1.5s"``, ``"3m"``, ``"1h30m"``). A bare numeric string (``"20"``) is seconds.
Durations are never negative and never longer than :data:`MAX_DURATION_S`. Anything else
raises :class:`~runner.errors.ManifestError` naming ``where`` and the allowed forms.

Owns: the duration syntax. Must not know: what the durations are for.
"""

from __future__ import annotations

import math
import re

from runner.errors import ManifestError

from .messages import show

__all__ = ["MAX_DURATION_S", "parse_duration"]

#: One year. Longer values are surely a mistake, and huge floats overflow the event loop's
#: timer arithmetic.
MAX_DURATION_S = 365 * 86400.0

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_BARE = re.compile(rf"{_NUMBER}")
# "ms" must come before "m" and "s" in the alternation, or "250ms" would parse as 250m + s.
_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)\s*")
_COMPOUND = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h|d)\s*)+")

_FORMS = "use seconds as a number (20, 1.5) or a string such as '250ms', '1.5s', '3m', '2h', '1d'"


def parse_duration(value: object, where: str) -> float:
    """Return ``value`` as seconds, or raise ManifestError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ManifestError(f"{show(value)} is not a duration; {_FORMS}", where)
    if isinstance(value, str):
        text = value.strip()
        if _BARE.fullmatch(text):
            seconds = float(text)
        elif _COMPOUND.fullmatch(text):
            seconds = sum(float(n) * _UNIT_S[u] for n, u in _PART.findall(text))
        else:
            raise ManifestError(f"{show(value)} is not a duration; {_FORMS}", where)
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
        if math.isnan(seconds):
            raise ManifestError(f"{show(value)} is not a duration; {_FORMS}", where)
        if seconds < 0:
            raise ManifestError(f"{show(value)} must not be negative; {_FORMS}", where)
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise ManifestError(f"{show(value)} is too long; at most 365d", where)
    return seconds
