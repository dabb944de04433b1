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
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from runner.sim import render_png
from runner.sim.images import image_shape, image_size_bytes


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


def snapshot_code(folder: Path) -> dict[str, Any]:
    """Copy the ``runner`` package into ``folder`` and make every process started from
    now on (simulator, runner, helpers) import that copy: a long benchmark then measures
    one version of the code even while the working tree is being edited. Changes the
    working directory to ``folder``. Returns the commit and whether the tree was dirty."""
    import shutil

    import runner

    package = Path(runner.__file__).parent
    shutil.copytree(package, folder / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    # `python -m` puts the working directory first on sys.path, PYTHONPATH next: both must
    # lead to the copy, ahead of the editable install.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(folder), os.environ.get("PYTHONPATH")) if p
    )
    os.chdir(folder)
    repo = package.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "runner")),
        "snapshot": True,
    }


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


def run_runner(
    manifest: Path,
    *args: str,
    timeout_s: float | None = None,
    on_tick: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run the CLI to the end in its own process; return exit code, wall and CPU time,
    and peak RSS of that process alone. ``timeout_s`` and ``on_tick`` as in
    :func:`run_process`."""
    env = {**os.environ, "APIXO_API_KEY": "bench-key"}
    return run_process(
        [sys.executable, "-m", "runner", str(manifest), "--quiet", *args],
        env=env,
        timeout_s=timeout_s,
        on_tick=on_tick,
    )


def run_process(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    *,
    timeout_s: float | None = None,
    on_tick: Callable[[int], None] | None = None,
    tick_s: float = 1.0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run ``argv`` to the end; return exit code, wall and CPU time, and peak RSS of that
    process alone (its children excluded). After ``timeout_s`` it gets SIGTERM, then
    SIGKILL 10 s later (``timed_out`` is then true). ``on_tick(pid)`` is called about
    every ``tick_s`` while it runs (to sample it). ``quiet`` discards its stdout.

    Peak RSS is the kernel's high-water mark of the child's own memory (``VmHWM``),
    sampled while it runs: ``ru_maxrss`` from ``wait4`` would not do, because Linux
    carries the parent's high-water mark over ``fork`` and ``execve``, so a child of a
    big parent would report at least the parent's size."""
    started = time.monotonic()
    stdout = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(list(argv), env=env, stdout=stdout, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    # Drain stderr as it comes: a chatty child must not block on a full pipe.
    chunks: list[bytes] = []
    os.set_blocking(proc.stderr.fileno(), False)
    timed_out = False
    killed_at: float | None = None
    next_tick = started + tick_s
    hwm_kb = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        hwm_kb = max(hwm_kb, _vm_hwm_kb(proc.pid))
        _drain(proc.stderr.fileno(), chunks)
        now = time.monotonic()
        if timeout_s is not None and now - started > timeout_s and killed_at is None:
            timed_out, killed_at = True, now
            proc.send_signal(signal.SIGTERM)
        elif killed_at is not None and now - killed_at > 10:
            proc.kill()
        if on_tick is not None and now >= next_tick:
            on_tick(proc.pid)
            next_tick = now + tick_s
        time.sleep(0.1)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    os.set_blocking(proc.stderr.fileno(), True)
    chunks.append(proc.stderr.read())
    proc.stderr.close()
    err = b"".join(chunks).decode(errors="replace")
    result: dict[str, Any] = {
        "exit_code": proc.returncode,
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round((hwm_kb or usage.ru_maxrss) / 1024, 1),
        "stderr_tail": err[-2000:],
    }
    if timed_out:
        result["timed_out"] = True
    return result


def _vm_hwm_kb(pid: int) -> int:
    """The peak resident set of ``pid`` so far, in KiB (0 if unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _drain(fd: int, chunks: list[bytes]) -> None:
    with contextlib.suppress(BlockingIOError):
        while data := os.read(fd, 65536):
            chunks.append(data)
            if sum(len(c) for c in chunks) > 1 << 20:  # keep the tail only
                del chunks[: len(chunks) // 2]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def verify_images(out: Path, image_bytes: int) -> dict[str, int]:
    """Compare every file on disk with what the simulator serves for its task and index
    (the simulator's images are a pure function of both and of the job's resolution and
    aspect ratio, read from ``results.jsonl``)."""
    return verify_files(
        (
            (result["task_id"], index, out / f["path"], result.get("input"))
            for result in read_jsonl(out / "results.jsonl")
            for index, f in enumerate(result["files"])
        ),
        image_bytes,
    )


def verify_files(
    files: Iterable[tuple[str, int, Path, dict[str, Any] | None]], image_bytes: int
) -> dict[str, int]:
    """Compare each ``(task_id, index, path, job_input)`` with the image the simulator
    serves: its size and shape follow ``job_input``'s ``resolution`` and
    ``aspect_ratio`` (None: a 2K square)."""
    ok = wrong = missing = 0
    for task_id, index, path, job_input in files:
        if not path.is_file():
            missing += 1
            continue
        job_input = job_input or {}
        resolution = "4K" if job_input.get("resolution") == "4K" else "2K"
        size = image_size_bytes(image_bytes, resolution)
        shape = image_shape(job_input.get("aspect_ratio"), resolution)
        expected = hashlib.sha256(render_png(task_id, index, size, *shape))
        actual = hashlib.sha256(path.read_bytes())
        if expected.hexdigest() == actual.hexdigest():
            ok += 1
        else:
            wrong += 1
    return {"identical": ok, "different": wrong, "missing": missing}


def makespan_efficiency(
    out: Path, concurrency: int, since: float | None = None
) -> dict[str, float | None]:
    """The makespan of a client with no detection lag over the measured one (first
    submission to the last result the runner knew of), and the rest of
    :func:`schedule_figures`. ``since``: only the ledger's events from that Unix time on
    (one run of several that shared the folder)."""
    events = read_jsonl(out / "ledger.jsonl")
    if since is not None:
        events = [e for e in events if e.get("t", 0) >= since]
    submits = [e["t"] for e in events if e["e"] == "submit"]
    results = [e for e in events if e["e"] == "result"]
    return schedule_figures(submits, results, concurrency)


def schedule_figures(
    submits: Sequence[float], results: Sequence[dict[str, Any]], concurrency: int
) -> dict[str, float | None]:
    """The figures of :func:`makespan_efficiency` for any client: ``submits`` are local
    Unix times of submissions, ``results`` hold ``t`` (local Unix time the client knew of
    the terminal state) and the API's ``create_ms`` and ``complete_ms``, in the order the
    client learnt them. Also the slot utilisations of :func:`utilisation_figures`."""
    timed = sorted(
        (e["create_ms"], (e["complete_ms"] - e["create_ms"]) / 1000)
        for e in results
        if e.get("complete_ms") and e.get("create_ms")
    )
    if not submits or not results:
        return {"efficiency": 0.0}
    # The ideal: a client with no detection lag fills each slot the moment it frees. The
    # simulator draws a task's duration as the task is created, so that client meets the
    # same durations in the same order of creation: greedy list scheduling of them in
    # creation order is its makespan. (In the order results came, slow tasks of every
    # wave would be scheduled last: a makespan no client can have, above 1 on uneven
    # profiles.)
    slots = [0.0] * concurrency
    for _, d in timed:
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
        **utilisation_figures(submits, results, concurrency),
    }


def slot_utilisation(
    spans: Sequence[tuple[float, float]], start: float, end: float, concurrency: int
) -> float | None:
    """The share of ``concurrency`` slots busy over ``[start, end]``: the time the
    ``spans`` (task creation to completion at the API) overlap it, over
    ``concurrency * (end - start)``. None for an empty window."""
    if end <= start:
        return None
    busy = sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)
    return round(busy / (concurrency * (end - start)), 4)


def utilisation_figures(
    submits: Sequence[float], results: Sequence[dict[str, Any]], concurrency: int
) -> dict[str, float | None]:
    """How busy the client kept its ``concurrency`` slots, from the API's ``createTime``
    and ``completeTime`` of the tasks in ``results``:

    * ``steady_utilisation``: :func:`slot_utilisation` from the first submission to the
      last one, while there is always more to submit (after it, slots empty by design).
    * ``first_wave_utilisation`` and ``after_first_wave_utilisation``: the utilisation
      of slot cycles. With the tasks ordered by completion (``i`` = 1, 2, ...) and their
      creations sorted, task ``i``'s slot is refilled by creation ``concurrency + i``
      (the API holds at most ``concurrency`` live tasks, so that creation comes after
      completion ``i``): its cycle is its run (creation to completion, ``d_i``) then the
      idle gap to that refill (``g_i``). The utilisation of a set of cycles is
      ``sum(d) / sum(d + g)``; the first wave is the cycles of the first
      ``concurrency`` completions, the rest those of the later ones that were refilled.
      Unlike a time window, this weighs every completion alike: a window holding the
      first wave's completions is only as long as the spread of durations (10 s for
      25-35 s tasks), so the same detection lag would cost three times as much there
      as in the steady state.
    * ``first_wave_refill_gap_s`` and ``after_first_wave_refill_gap_s``: the mean ``g``
      of each: detection lag plus the time to submit the next task.

    None where there is no such stretch (fewer than ``concurrency`` completions, or
    none refilled after the first wave)."""
    spans = sorted(
        (e["create_ms"] / 1000, e["complete_ms"] / 1000)
        for e in results
        if e.get("create_ms") and e.get("complete_ms")
    )
    out: dict[str, float | None] = {
        "steady_utilisation": None,
        "first_wave_utilisation": None,
        "after_first_wave_utilisation": None,
        "first_wave_refill_gap_s": None,
        "after_first_wave_refill_gap_s": None,
    }
    if not spans or not submits:
        return out
    out["steady_utilisation"] = slot_utilisation(spans, min(submits), max(submits), concurrency)
    creates = [a for a, _ in spans]
    by_end = sorted(spans, key=lambda span: span[1])
    cycles = [
        (end - start, max(0.0, creates[concurrency + i] - end))
        for i, (start, end) in enumerate(by_end[: len(spans) - concurrency])
    ]
    for name, part in (
        ("first_wave", cycles[:concurrency]),
        ("after_first_wave", cycles[concurrency:]),
    ):
        if len(cycles) >= concurrency and part:
            run, idle = sum(d for d, _ in part), sum(g for _, g in part)
            out[f"{name}_utilisation"] = round(run / (run + idle), 4) if run + idle else None
            out[f"{name}_refill_gap_s"] = round(idle / len(part), 3)
    return out


def api_requests(stats: dict[str, Any]) -> dict[str, int]:
    """API requests (submissions and polls, whatever their answer) and 429s, from the
    simulator's ``/_sim/stats``."""
    requests = stats["requests"]
    generate = sum(requests.get("generate", {}).values())
    status = sum(requests.get("status", {}).values())
    return {
        "generate": generate,
        "status": status,
        "api": generate + status,
        "http_429": sum(v.get("429", 0) for v in requests.values()),
    }


def self_rusage() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
