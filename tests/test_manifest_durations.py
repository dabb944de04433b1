"""Durations: numbers are seconds, strings carry a unit; everything else is a ManifestError."""

from __future__ import annotations

import math

import pytest

from runner.errors import ManifestError
from runner.manifest.durations import parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (20, 20.0),
        (1.5, 1.5),
        ("20", 20.0),
        ("0.5", 0.5),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("3m", 180.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        (" 2s ", 2.0),
        (".5s", 0.5),
    ],
)
def test_parse_duration_accepts_seconds_and_unit_strings(value: object, seconds: float) -> None:
    assert math.isclose(parse_duration(value, "polling.interval"), seconds)


@pytest.mark.parametrize(
    "value",
    [
        True,
        None,
        -1,
        -0.5,
        "",
        "abc",
        "5x",
        "-3s",
        "1e3",
        "3 minutes",
        "s",
        [],
        {"s": 1},
        math.nan,
        math.inf,
        10**400,
        "400d",
    ],
)
def test_parse_duration_rejects_everything_else_naming_where(value: object) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_duration(value, "campaign.yaml:7: polling.interval")
    assert caught.value.where == "campaign.yaml:7: polling.interval"
    text = str(caught.value)
    assert "250ms" in text or "365d" in text  # the allowed forms, or the ceiling


def test_parse_duration_error_lists_allowed_forms() -> None:
    with pytest.raises(ManifestError, match=r"'1\.5s', '3m', '2h'"):
        parse_duration("soon", "--deadline")
