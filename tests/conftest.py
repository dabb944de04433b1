"""Shared fixtures: a simulator on loopback, and a manifest writer (helpers in runs.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from runs import FAST_POLLING, TIME_SCALE
from simfixtures import AUTH, fast_config

from runner.sim import SimConfig, SimServer


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    # SIM_SEED varies the simulator's draws, e.g. to repeat the fault suite (RELIABILITY.md).
    seed = int(os.environ.get("SIM_SEED", "7"))
    config = SimConfig(time_scale=TIME_SCALE, retry_after_s=0.05, seed=seed)
    async with SimServer(config, host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
def manifest(tmp_path: Path) -> Callable[..., Path]:
    """Write a campaign manifest into tmp_path and return its path."""

    def write(jobs: list[dict[str, Any]], name: str = "campaign", **settings: Any) -> Path:
        doc: dict[str, Any] = {"name": name, "polling": dict(FAST_POLLING), "jobs": jobs}
        for key, value in settings.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key].update(value)
            else:
                doc[key] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


# -- the simulator's own tests (tests/test_sim_*.py; helpers in simfixtures.py) ---------------


@pytest.fixture
async def fast_sim() -> AsyncIterator[SimServer]:
    """A seeded SimServer at time scale 0.001 (``simfixtures.fast_config()``) on loopback."""
    async with SimServer(fast_config()) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that sends the simulator tests' Bearer key."""
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session
