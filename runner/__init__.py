"""runner: a resumable asyncio batch runner for the APIXO image-generation API.

The command line is ``python -m runner MANIFEST``; a library user needs only these::

    from runner import load_campaign, Engine, RunOptions
    campaign = load_campaign("manifests/campaign.yaml")
    summary = await Engine(campaign, RunOptions(api_key=...)).run()
    summary["exit_code"]  # what the command line would exit with

The rest is layered, each package below the ones that import it: ``manifest``
(what to do), ``api`` (talking to the API) and ``state`` (what was done), ``present``
(what a run shows and leaves), ``run`` (doing it); ``sim`` is the simulated API. See
``docs/ARCHITECTURE.md``.
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
    # Lazy import, for start-up time: the engine (and aiohttp with it) loads on first use,
    # so `--dry-run` and `--status` start fast.
    if name in ("Engine", "RunOptions"):
        from runner.run import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
