"""runner: a resumable asyncio batch runner for the APIXO image-generation API.

The command line is ``python -m runner MANIFEST``; a library user needs only these::

    from runner import load_campaign, Engine, RunOptions
    campaign = load_campaign("manifests/campaign.yaml")
    exit_code = await Engine(campaign, RunOptions(api_key=...)).run()
"""

from typing import TYPE_CHECKING, Any

from runner.manifest.campaign import Campaign, load_campaign
from runner.manifest.jobspec import Job

from .errors import (
    FatalApiError,
    LockedError,
    ManifestError,
    RunnerError,
)

__all__ = [
    "Campaign",
    "Engine",
    "FatalApiError",
    "Job",
    "LockedError",
    "ManifestError",
    "RunOptions",
    "RunnerError",
    "load_campaign",
]

if TYPE_CHECKING:
    from runner.run.engine import Engine, RunOptions


def __getattr__(name: str) -> Any:
    # The engine (and aiohttp with it) loads on first use, so `--dry-run` and `--status`
    # start fast.
    if name in ("Engine", "RunOptions"):
        from runner.run import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
