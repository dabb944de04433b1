"""Helpers to run the runner against the simulator: in-process (fast) or as a real
subprocess (for signals and kills), and to check what it left on disk."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.manifest.campaign import load_campaign
from runner.run.engine import Engine, RunOptions
from runner.sim import SimServer

#: fast simulated time: 2K tasks take 0.25-0.35 s
TIME_SCALE = 0.01
#: polling tuned to that scale (the real API's recipe is 20 s, then every 3 s)
FAST_POLLING = {"initial_delay": 0.2, "interval": 0.05, "jitter": 0.2, "timeout": 60}
TEST_KEY = "test-key-0123456789abcdef"


def prompts(n: int, prefix: str = "a product photo, variant") -> list[dict[str, Any]]:
    return [{"prompt": f"{prefix} {i}"} for i in range(n)]


async def run_engine(
    path: Path, base_url: str, *, key: str = TEST_KEY, **options: Any
) -> tuple[int, Engine]:
    """Run the engine in this process against ``base_url``; return (exit code, engine)."""
    campaign = load_campaign(path, {"base_url": base_url})
    engine = Engine(campaign, RunOptions(api_key=key, **options))
    summary = await engine.run()
    return summary["exit_code"], engine


def out_dir(path: Path) -> Path:
    return path.parent / "out" / path.stem


def image_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / "images").rglob("*") if p.is_file())


def assert_images_match_server(out: Path, sim: SimServer) -> int:
    """Every image on disk is byte-identical to what the simulator served; return count."""
    served = {h for task in sim.tasks.values() for h in task.sha256}
    files = image_files(out)
    for f in files:
        assert hashlib.sha256(f.read_bytes()).hexdigest() in served, f"{f} differs from the server"
    return len(files)


async def start_cli(
    path: Path, base_url: str, *extra: str, key: str = TEST_KEY
) -> asyncio.subprocess.Process:
    """Start ``python -m runner`` as a real process (so it can be signalled or killed)."""
    env = {**os.environ, "APIXO_API_KEY": key}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner",
        str(path),
        "--base-url",
        base_url,
        *extra,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_cli(path: Path, base_url: str, *extra: str, key: str = TEST_KEY) -> tuple[int, str]:
    """Run the CLI to the end; return (exit code, stderr)."""
    proc = await start_cli(path, base_url, *extra, key=key)
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def run_cli_sync(path: Path, *extra: str, key: str = TEST_KEY) -> tuple[int, str, str]:
    """Run ``python -m runner PATH ...`` as a user would, to the end; return (exit code,
    stdout, stderr). For commands that send nothing (--dry-run, --status, errors)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "runner", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "APIXO_API_KEY": key},
    )
    return done.returncode, done.stdout, done.stderr


async def wait_until(
    condition: Callable[[], bool], proc: asyncio.subprocess.Process | None = None
) -> None:
    """Wait until the condition holds (e.g. on the simulator's counters), or the process
    ends. Polls every 5 ms, for at most 20 s."""
    for _ in range(4000):
        if condition() or (proc is not None and proc.returncode is not None):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")
