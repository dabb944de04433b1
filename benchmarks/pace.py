"""The runner's CPU at the real API's full pace: real time (25-35 s tasks), 1,000 live-task
slots, 10,000 requests a minute, 1 MB images, about 33 tasks a second for a couple of
minutes. The claim checked: the runner uses under 10 % of one core at 33 tasks a second,
so it is never the bottleneck.

    python benchmarks/pace.py [--jobs 4000] [--time-scale 1.0] [--image-bytes 1000000]
    python benchmarks/pace.py --jobs 600 --concurrency 200 --time-scale 0.5   # smoke run
    python benchmarks/pace.py --profile /tmp/pace.raw         # where the CPU goes (py-spy)

The simulator runs in its own process, so only the runner's CPU is counted. The runner's
CPU time (all threads, its main thread apart, user and system) and the simulator's
counters are sampled every second; the steady state is the stretch from the end of the
first wave (twice as many tasks created as there are slots) to the last submission, and
its figures (CPU as a fraction of one core, ms of CPU per task, tasks a second) come from
the samples at its two ends. ``cpu_fraction_at_33_tasks_per_s`` is the CPU per task times
the API's full pace. Prints one JSON object.

``--profile PATH`` attaches py-spy (``pip install py-spy``; root or ptrace allowed) to
the runner for the steady state only and adds ``profile``: CPU ms per task by thread
(``/proc``), the Python part by area (HTTP client by request kind, download, ledger,
poller, thread hops, event loop), the hottest functions and runner lines, and what ran
with the GIL released (hashing, system calls); see ``benchmarks/cpu_profile.py``. py-spy
pauses the process to sample it, which costs the runner CPU: take the headline figures
from a run without ``--profile``. The collapsed stacks stay in PATH (flamegraph.pl or
speedscope read them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import (
    api_requests,
    makespan_efficiency,
    run_runner,
    sim_get,
    simulator,
    snapshot_code,
    verify_images,
    write_campaign,
)
from cpu_profile import PySpy, summarise, thread_cpu


class Sampler:
    """Called about once a second while the runner runs: its CPU time and the simulator's
    counters. With ``profiler``, starts it when the steady state begins (``concurrency``
    x 2 tasks created) and stops it at the last submission (``jobs`` created)."""

    def __init__(
        self, base_url: str, concurrency: int, jobs: int, profiler: PySpy | None = None
    ) -> None:
        self.base_url = base_url
        self.concurrency = concurrency
        self.jobs = jobs
        self.profiler = profiler
        self.started = time.monotonic()
        self.samples: list[dict[str, float]] = []
        self.profiled: tuple[float, float] | None = None  # (start, end) sample times

    def __call__(self, pid: int) -> None:
        cpu = thread_cpu(pid)
        try:
            stats = sim_get(self.base_url, "/_sim/stats")
        except OSError:
            return
        if cpu is None:
            return
        t = time.monotonic() - self.started
        self.samples.append(
            {
                "t": t,
                "cpu_s": cpu["total"],
                "cpu_main_s": cpu["main"],
                "cpu_user_s": cpu["user"],
                "cpu_system_s": cpu["system"],
                "tasks_created": stats["tasks_created"],
                "live": stats["live"],
                "images_served": stats["images_served"],
                "bytes_served": stats["bytes_served"],
                "api_requests": api_requests(stats)["api"],
            }
        )
        created = stats["tasks_created"]
        if self.profiler is not None:
            if self.profiled is None and 2 * self.concurrency <= created < self.jobs:
                self.profiler.start(pid)
                self.profiled = (t, t)
            elif self.profiled is not None and self.profiler.running and created >= self.jobs:
                self.profiler.stop()
                self.profiled = (self.profiled[0], t)

    def stretch(self, start: float, end: float) -> tuple[int, dict[str, float]] | None:
        """Tasks created and CPU seconds used (``total``, ``main`` thread, ``user``,
        ``system``) between the samples at times ``start`` and ``end``."""
        inside = [x for x in self.samples if start <= x["t"] <= end]
        if len(inside) < 2:
            return None
        a, b = inside[0], inside[-1]
        cpu = {
            "total": b["cpu_s"] - a["cpu_s"],
            "main": b["cpu_main_s"] - a["cpu_main_s"],
            "user": b["cpu_user_s"] - a["cpu_user_s"],
            "system": b["cpu_system_s"] - a["cpu_system_s"],
        }
        return int(b["tasks_created"] - a["tasks_created"]), cpu

    def steady(self, concurrency: int, jobs: int) -> dict[str, Any]:
        """Rates over the steady state: from the first wave's end (twice as many tasks
        created as there are slots: the first wave, all submitted at once, also ends in a
        burst) to the last submission."""
        s = self.samples
        first = next((x for x in s if x["tasks_created"] >= 2 * concurrency), None)
        last = next((x for x in reversed(s) if x["tasks_created"] < jobs), None)
        if first is None or last is None or last["t"] - first["t"] < 5:
            return {"error": "no steady state: too few jobs for the slots (raise --jobs)"}
        span = last["t"] - first["t"]

        def rate(key: str) -> float:
            return (last[key] - first[key]) / span

        def per_task(key: str) -> float:
            return 1000 * rate(key) / max(rate("tasks_created"), 1e-9)

        return {
            "from_s": round(first["t"], 1),
            "to_s": round(last["t"], 1),
            "duration_s": round(span, 1),
            "cpu_fraction_of_one_core": round(rate("cpu_s"), 4),
            "tasks_per_s": round(rate("tasks_created"), 2),
            "cpu_ms_per_task": round(per_task("cpu_s"), 3),
            "cpu_ms_per_task_main_thread": round(per_task("cpu_main_s"), 3),
            "cpu_ms_per_task_other_threads": round(per_task("cpu_s") - per_task("cpu_main_s"), 3),
            "cpu_ms_per_task_user": round(per_task("cpu_user_s"), 3),
            "cpu_ms_per_task_system": round(per_task("cpu_system_s"), 3),
            "images_downloaded_per_s": round(rate("images_served"), 2),
            "download_mb_per_s": round(rate("bytes_served") / 1e6, 2),
            "api_requests_per_s": round(rate("api_requests"), 1),
            "mean_live_tasks": round(
                sum(x["live"] for x in s if first["t"] <= x["t"] <= last["t"])
                / max(1, sum(1 for x in s if first["t"] <= x["t"] <= last["t"])),
                1,
            ),
            "peak_cpu_fraction_10s": round(self._peak_cpu(10.0), 4),
        }

    def _peak_cpu(self, window_s: float) -> float:
        """The busiest ``window_s`` of the run, as a fraction of one core."""
        best = 0.0
        j = 0
        for i, x in enumerate(self.samples):
            while self.samples[j]["t"] < x["t"] - window_s:
                j += 1
            if i > j and x["t"] > self.samples[j]["t"]:
                y = self.samples[j]
                best = max(best, (x["cpu_s"] - y["cpu_s"]) / (x["t"] - y["t"]))
        return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--rate", type=int, help="requests per scaled minute (10 x concurrency)")
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--image-bytes", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--run-timeout", type=float, default=600, help="wall seconds")
    ap.add_argument("--no-verify", action="store_true", help="skip hashing the images")
    ap.add_argument(
        "--live-tree", action="store_true", help="use the working tree, not a copy made at start"
    )
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="PATH",
        help="profile the steady state with py-spy into PATH (collapsed stacks) and add "
        "a breakdown of the runner's CPU by area",
    )
    ap.add_argument("--profile-rate", type=int, default=200, help="py-spy samples a second")
    args = ap.parse_args()
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="pace-code-") as code:
        try:
            snapshot = None if args.live_tree else snapshot_code(Path(code))
            report = measure(args)
        finally:
            os.chdir(cwd)
    if snapshot:
        report["code"] = snapshot
    print(json.dumps(report, indent=2))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rate = args.rate or 10 * args.concurrency
    scale = args.time_scale
    period = 60 * scale
    jobs = [
        {"id": f"job-{i:05d}", "prompt": f"catalogue item {i}, studio light", "max_images": 1}
        for i in range(args.jobs)
    ]
    with tempfile.TemporaryDirectory(prefix="pace-") as tmp, simulator(
        "--time-scale", str(scale), "--rate", str(rate), "--rate-period", str(period),
        "--concurrency", str(args.concurrency), "--image-bytes", str(args.image_bytes),
        "--seed", str(args.seed),
    ) as base_url:  # fmt: skip
        manifest = write_campaign(
            Path(tmp),
            jobs,
            limits={"concurrency": args.concurrency, "rate": rate, "rate_period": period},
            polling={"initial_delay": 20 * scale, "interval": 3 * scale, "timeout": 600 * scale},
        )
        profiler = None
        if args.profile is not None:
            profiler = PySpy(args.profile.resolve(), args.profile_rate)
        sampler = Sampler(base_url, args.concurrency, args.jobs, profiler)
        try:
            proc = run_runner(
                manifest, "--base-url", base_url, timeout_s=args.run_timeout, on_tick=sampler
            )
        finally:
            if profiler is not None:
                profiler.stop()
        stats = sim_get(base_url, "/_sim/stats")
        out = Path(tmp) / "out" / "bench"
        requests = api_requests(stats)
        report: dict[str, Any] = {
            "settings": {
                "jobs": args.jobs,
                "concurrency": args.concurrency,
                "rate": rate,
                "rate_period_s": period,
                "time_scale": scale,
                "image_bytes": args.image_bytes,
            },
            "exit_code": proc["exit_code"],
            "wall_s": proc["wall_s"],
            "cpu_s": proc["cpu_s"],
            "cpu_fraction_overall": round(proc["cpu_s"] / proc["wall_s"], 4),
            "cpu_s_per_1000_jobs": round(proc["cpu_s"] * 1000 / args.jobs, 3),
            "peak_rss_mb": proc["peak_rss_mb"],
            "steady_state": sampler.steady(args.concurrency, args.jobs),
            "tasks_per_s_overall": round(stats["tasks_created"] / proc["wall_s"], 2),
            "http_429": requests["http_429"],
            "api_requests_per_job": round(requests["api"] / args.jobs, 3),
            "peak_live_tasks": stats["peak_live"],
            "images_served": stats["images_served"],
        }
        if (out / "ledger.jsonl").is_file():
            report.update(makespan_efficiency(out, args.concurrency))
        if not args.no_verify and (out / "results.jsonl").is_file():
            report["images"] = verify_images(out, args.image_bytes)
        steady = report["steady_state"]
        if "cpu_fraction_of_one_core" in steady:
            # The steady stretch may run a little under the API's 33 tasks/s (waves of
            # completions): the CPU per task says what the full pace would cost.
            at_full_pace = steady["cpu_ms_per_task"] * 33 / 1000
            report["cpu_fraction_at_33_tasks_per_s"] = round(at_full_pace, 4)
            report["under_10_percent_of_one_core_at_33_tasks_per_s"] = at_full_pace < 0.1
        if profiler is not None:
            report["profile"] = profile_report(sampler, profiler)
        if proc["exit_code"] != 0 or proc.get("timed_out"):
            report["stderr_tail"] = proc["stderr_tail"][-1500:]
    return report


def profile_report(sampler: Sampler, profiler: PySpy) -> dict[str, Any]:
    """The py-spy samples of the profiled stretch, in ms of CPU per task by area."""
    if sampler.profiled is None:
        return {"error": "the steady state never began: nothing profiled (raise --jobs)"}
    if not profiler.path.is_file():
        return {"error": f"py-spy wrote nothing: {profiler.error}"}
    stretch = sampler.stretch(*sampler.profiled)
    if stretch is None:
        return {"error": "the profiled stretch was too short"}
    tasks, cpu = stretch
    report = summarise(profiler.path, rate=profiler.rate, tasks=tasks, cpu_s=cpu)
    report["profiled_s"] = [round(t, 1) for t in sampler.profiled]
    report["tasks_profiled"] = tasks
    return report


if __name__ == "__main__":
    main()
