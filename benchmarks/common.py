"""Shared pieces of the benchmarks: a simulator in its own process, a campaign on disk,
the runner in its own process with its resource usage, and the figures from what it left.

Benchmarks print JSON and are run on purpose (never by the test suite). They report
ratios against a bound so that the numbers survive a noisy machine."""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from runner.sim import render_png


@contextlib.contextmanager
def simulator(*options: str) -> Iterator[str]:
    """Start ``python -m runner.sim --port 0 ...`` and yield its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.sim", "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(10)


def sim_get(base_url: str, path: str) -> Any:
    origin = base_url.rsplit("/api/", 1)[0]
    with urllib.request.urlopen(origin + path, timeout=30) as resp:
        return json.loads(resp.read())


def write_campaign(folder: Path, jobs: list[dict[str, Any]], **settings: Any) -> Path:
    """A YAML campaign whose jobs live in a JSONL file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "jobs.jsonl").open("w") as f:
        for job in jobs:
            f.write(json.dumps(job) + "\n")
    doc = {"name": "bench", "jobs_file": "jobs.jsonl", **settings}
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_runner(manifest: Path, *args: str) -> dict[str, Any]:
    """Run the CLI to the end in its own process; return exit code, wall and CPU time,
    and peak RSS of that process alone."""
    env = {**os.environ, "APIXO_API_KEY": "bench-key"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", str(manifest), "--quiet", *args],
        env=env,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    return {
        "exit_code": proc.returncode,
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "stderr_tail": err[-2000:],
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def verify_images(out: Path, image_bytes: int) -> dict[str, int]:
    """Compare every file on disk with what the simulator serves for its task and index
    (the simulator's images are a pure function of both)."""
    ok = wrong = missing = 0
    for result in read_jsonl(out / "results.jsonl"):
        for index, f in enumerate(result["files"]):
            path = out / f["path"]
            if not path.is_file():
                missing += 1
                continue
            expected = hashlib.sha256(render_png(result["task_id"], index, image_bytes))
            actual = hashlib.sha256(path.read_bytes())
            if expected.hexdigest() == actual.hexdigest():
                ok += 1
            else:
                wrong += 1
    return {"identical": ok, "different": wrong, "missing": missing}


def makespan_efficiency(out: Path, concurrency: int) -> dict[str, float]:
    """Ideal list-scheduling makespan of the observed generation times over the measured
    one (first submission to the last result the runner knew of)."""
    events = read_jsonl(out / "ledger.jsonl")
    submits = [e["t"] for e in events if e["e"] == "submit"]
    results = [e for e in events if e["e"] == "result"]
    durations = [
        (e["complete_ms"] - e["create_ms"]) / 1000
        for e in results
        if e.get("complete_ms") and e.get("create_ms")
    ]
    if not submits or not results:
        return {"efficiency": 0.0}
    slots = [0.0] * concurrency
    for d in durations:  # greedy list scheduling in submission order
        heapq.heapreplace(slots, slots[0] + d)
    ideal = max(slots)
    measured = max(e["t"] for e in results) - min(submits)
    lags = sorted(
        e["t"] - e["complete_ms"] / 1000 for e in results if e.get("complete_ms") is not None
    )
    return {
        "efficiency": round(ideal / measured, 4) if measured else 0.0,
        "ideal_makespan_s": round(ideal, 3),
        "measured_makespan_s": round(measured, 3),
        "detection_lag_p50_s": round(lags[len(lags) // 2], 3) if lags else 0.0,
        "detection_lag_p95_s": round(lags[int(len(lags) * 0.95)], 3) if lags else 0.0,
    }


def self_rusage() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
