"""The runner (poll and callback mode) next to the provider's polling recipe
(``naive.py``), on identical job lists, each against its own fresh simulator with the real
API's shape: 1,000 live-task slots and 10,000 requests per (scaled) minute.

    python benchmarks/perf.py [--jobs 3000] [--concurrency 1000] [--time-scale 0.5]
        [--scenarios 2k,4k-mix] [--modes poll,callback,naive,naive-backoff]
    python benchmarks/perf.py --jobs 300 --concurrency 100 --time-scale 0.2   # smoke run

Scenarios: ``2k`` (every job 2K, one image) and ``4k-mix`` (``--share-4k`` of them 4K).
Modes: the runner in ``poll`` and ``callback`` mode; ``naive``, the recipe as the page
gives it (a 429 waits ``Retry-After`` and retries); ``naive-backoff``, the same recipe
that also doubles its wait on repeated 429s. Against a window that counts rejected
requests, ``naive`` locks up for good once the window fills (every slot retrying every
second keeps it full); such a run is ended after 90 scaled seconds without progress and
reported as ``stalled``, with no efficiency (its makespan has no end).

Per run: makespan efficiency (the ideal list-scheduling makespan of the observed
generation times over the measured one; list scheduling is a reference, not a strict
bound, so a client that never leaves a slot idle can land a little above 1.0), API
requests per job (submissions and polls, from the simulator's counters, 429s included),
share of the request budget used over the makespan, 429s, detection lag p50/p95
(completion to the client knowing), CPU seconds per 1,000 jobs and peak RSS of the
client's process alone, exit code, images byte-identical to what was served. Then, per
runner mode, ratios against each naive client. Prints one JSON object.

Durations, the request window and the polling settings are all multiplied by
``--time-scale`` (0.5: 2K tasks take 13-19 s), so the load has the real API's shape in
less wall time, without making this 2-core machine the bottleneck. ``--rate`` defaults to
10 requests per slot per minute (10,000 for 1,000 slots), so a small smoke run keeps the
same pressure on the budget. Every process runs a copy of ``runner/`` taken at start
(``--live-tree`` to use the working tree), so edits made meanwhile do not mix versions.
With the defaults it takes about 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import (
    api_requests,
    makespan_efficiency,
    run_process,
    run_runner,
    sim_get,
    simulator,
    snapshot_code,
    verify_files,
    verify_images,
    write_campaign,
)

SCENARIOS = {"2k": 0.0, "4k-mix": None}  # None: --share-4k
MODES = ("poll", "callback", "naive", "naive-backoff")
NAIVE = Path(__file__).with_name("naive.py")


def make_jobs(n: int, share_4k: float, seed: int) -> list[dict[str, Any]]:
    """``n`` one-image jobs, exactly ``round(n * share_4k)`` of them 4K, spread at random."""
    rng = random.Random(seed)
    four_k = set(rng.sample(range(n), round(n * share_4k)))
    return [
        {
            "id": f"job-{i:05d}",
            "prompt": f"catalogue item {i}, studio light",
            "resolution": "4K" if i in four_k else "2K",
            "max_images": 1,
        }
        for i in range(n)
    ]


def per_job(n: float, jobs: int) -> float:
    return round(n / jobs, 3) if jobs else 0.0


def figures_from_stats(stats: dict[str, Any], jobs: int) -> dict[str, Any]:
    req = api_requests(stats)
    return {
        "api_requests_per_job": per_job(req["api"], jobs),
        "generate_per_job": per_job(req["generate"], jobs),
        "status_per_job": per_job(req["status"], jobs),
        "http_429": req["http_429"],
        "tasks_created": stats["tasks_created"],
        "submitted_twice": sum(1 for n in stats["submissions_per_prompt"].values() if n > 1),
        "peak_live_tasks": stats["peak_live"],
    }


def process_figures(proc: dict[str, Any], jobs: int) -> dict[str, Any]:
    out = {k: v for k, v in proc.items() if k != "stderr_tail"}
    out["cpu_s_per_1000_jobs"] = round(proc["cpu_s"] * 1000 / jobs, 3) if jobs else 0.0
    if proc["exit_code"] != 0 or proc.get("timed_out"):
        out["stderr_tail"] = proc["stderr_tail"][-1500:]
    return out


def run_runner_mode(
    mode: str, base_url: str, folder: Path, jobs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    scale = args.time_scale
    api: dict[str, Any] = {"mode": mode}
    if mode == "callback":
        # The receiver binds an ephemeral loopback port; with a loopback base URL the
        # runner derives the URL it gives the API from it.
        api["callback"] = {"listen": "127.0.0.1:0"}
    manifest = write_campaign(
        folder,
        jobs,
        api=api,
        limits={"concurrency": args.concurrency, "rate": args.rate, "rate_period": 60 * scale},
        polling={"initial_delay": 20 * scale, "interval": 3 * scale, "timeout": 600 * scale},
    )
    proc = run_runner(manifest, "--base-url", base_url, timeout_s=args.run_timeout)
    stats = sim_get(base_url, "/_sim/stats")
    out = folder / "out" / "bench"
    report: dict[str, Any] = process_figures(proc, len(jobs))
    report.update(figures_from_stats(stats, len(jobs)))
    if mode == "callback":
        report["webhooks"] = {
            k: stats[k] for k in ("callbacks_sent", "callbacks_delivered", "callbacks_failed")
        }
    if (out / "ledger.jsonl").is_file():
        report.update(makespan_efficiency(out, args.concurrency))
    if (out / "results.jsonl").is_file():
        report["images"] = verify_images(out, args.image_bytes)
    if (out / "summary.json").is_file():
        summary = json.loads((out / "summary.json").read_text())
        report["jobs"] = summary.get("jobs")
        run = summary.get("run", {})
        for key in ("polled_results", "webhook_results"):
            if key in run:
                report[key] = run[key]
    if proc["exit_code"] != 0:
        report["error"] = f"runner exited {proc['exit_code']}"
    return report


def run_naive_mode(
    on_429: str, base_url: str, folder: Path, jobs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    scale = args.time_scale
    folder.mkdir(parents=True, exist_ok=True)
    jobs_file = folder / "jobs.jsonl"
    jobs_file.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    out, report_file = folder / "out", folder / "naive.json"
    options = {
        "--base-url": base_url,
        "--jobs-file": jobs_file,
        "--out": out,
        "--concurrency": args.concurrency,
        "--initial-delay": 20 * scale,
        "--interval": 3 * scale,
        "--retry-after": 1 * scale,
        "--backoff": 0.5 * scale,
        "--timeout": 600 * scale,
        "--on-429": on_429,
        "--max-backoff": 30 * scale,
        # Nothing submitted or finished for a minute and a half: locked up, not slow.
        "--stall": 90 * scale,
        "--report": report_file,
    }
    argv = [sys.executable, str(NAIVE)]
    for option, value in options.items():
        argv += [option, str(value)]
    proc = run_process(argv, timeout_s=args.run_timeout, quiet=True)
    stats = sim_get(base_url, "/_sim/stats")
    report: dict[str, Any] = process_figures(proc, len(jobs))
    report.update(figures_from_stats(stats, len(jobs)))
    if not report_file.is_file():
        report["error"] = f"naive client exited {proc['exit_code']} without a report"
        return report
    naive = json.loads(report_file.read_text())
    for key in (
        "stalled",
        "stalled_after_s",
        "last_progress_s",
        "efficiency",
        "ideal_makespan_s",
        "measured_makespan_s",
        "detection_lag_p50_s",
        "detection_lag_p95_s",
        "polls_per_job",
    ):
        if key in naive:
            report[key] = naive[key]
    records = naive["records"]
    report["images"] = verify_files(
        (
            (rec["task_id"], index, out / path)
            for rec in records
            for index, path in enumerate(rec.get("files", ()))
        ),
        args.image_bytes,
    )
    report["jobs"] = naive["states"]
    return report


def add_budget_use(report: dict[str, Any], jobs: int, args: argparse.Namespace) -> None:
    """Share of the request budget spent over the measured makespan."""
    makespan = report.get("measured_makespan_s")
    if makespan:
        allowed = args.rate * makespan / (60 * args.time_scale)
        report["request_budget_used"] = round(report["api_requests_per_job"] * jobs / allowed, 3)


def ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(a / b, 3)


def ratios(runner: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The runner's efficiency and requests per job over each naive client's. None where a
    figure is missing, a run failed, or the naive client locked up (its makespan has no
    end)."""
    out: dict[str, Any] = {}
    for base in ("naive", "naive_backoff"):
        if base not in result:
            continue
        other = result[base]
        stalled = bool(other.get("stalled"))
        broken = "error" in runner or "error" in other
        for figure, field in (
            ("efficiency", "efficiency"),
            ("requests_per_job", "api_requests_per_job"),
        ):
            value = None if stalled or broken else ratio(runner.get(field), other.get(field))
            out[f"{figure}_vs_{base}"] = value
        if stalled:
            out[f"{base}_stalled"] = True
    return out


def run_scenario(name: str, share_4k: float, args: argparse.Namespace) -> dict[str, Any]:
    jobs = make_jobs(args.jobs, share_4k, args.seed)
    scale = args.time_scale
    sim_options = [
        "--time-scale", str(scale), "--rate", str(args.rate), "--rate-period", str(60 * scale),
        "--concurrency", str(args.concurrency), "--image-bytes", str(args.image_bytes),
        "--seed", str(args.seed),
    ]  # fmt: skip
    result: dict[str, Any] = {
        "jobs": len(jobs),
        "jobs_4k": sum(j["resolution"] == "4K" for j in jobs),
    }
    with tempfile.TemporaryDirectory(prefix=f"perf-{name}-") as tmp:
        for mode in args.modes:
            key = mode.replace("-", "_") if mode.startswith("naive") else f"runner_{mode}"
            started = time.monotonic()
            print(f"perf: {name} {key} ...", file=sys.stderr, flush=True)
            try:
                # A fresh simulator per run: its counters and its live tasks start at zero.
                with simulator(*sim_options) as base_url:
                    folder = Path(tmp) / mode
                    if mode == "naive":
                        result[key] = run_naive_mode("retry-after", base_url, folder, jobs, args)
                    elif mode == "naive-backoff":
                        result[key] = run_naive_mode("backoff", base_url, folder, jobs, args)
                    else:
                        result[key] = run_runner_mode(mode, base_url, folder, jobs, args)
                add_budget_use(result[key], len(jobs), args)
            except Exception as exc:  # report it and carry on with the next run
                result[key] = {"error": f"{type(exc).__name__}: {exc}"}
            print(
                f"perf: {name} {key} done in {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    result["ratios"] = {
        key: ratios(result[key], result)
        for key in ("runner_poll", "runner_callback")
        if key in result
    }
    return result


def csv_choice(allowed: Any) -> Any:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(f"{item!r}: choose from {', '.join(allowed)}")
        return items

    return parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--rate", type=int, help="requests per scaled minute (10 x concurrency)")
    ap.add_argument("--time-scale", type=float, default=0.5)
    ap.add_argument("--scenarios", type=csv_choice(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument("--modes", type=csv_choice(MODES), default=list(MODES))
    ap.add_argument("--share-4k", type=float, default=0.3, help="4K share of 4k-mix")
    ap.add_argument("--image-bytes", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--run-timeout", type=float, default=600, help="wall seconds per run")
    ap.add_argument(
        "--live-tree", action="store_true", help="use the working tree, not a copy made at start"
    )
    args = ap.parse_args()
    if args.rate is None:
        args.rate = 10 * args.concurrency
    started = time.monotonic()
    report: dict[str, Any] = {
        "settings": {
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "rate": args.rate,
            "rate_period_s": round(60 * args.time_scale, 6),
            "time_scale": args.time_scale,
            "polling": {
                "initial_delay_s": round(20 * args.time_scale, 6),
                "interval_s": round(3 * args.time_scale, 6),
            },
            "image_bytes": args.image_bytes,
            "seed": args.seed,
        },
        "scenarios": {},
    }
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="perf-code-") as code:
        try:
            if not args.live_tree:
                report["code"] = snapshot_code(Path(code))
            for name in args.scenarios:
                share = SCENARIOS[name]
                report["scenarios"][name] = run_scenario(
                    name, args.share_4k if share is None else share, args
                )
        finally:
            os.chdir(cwd)
    report["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
