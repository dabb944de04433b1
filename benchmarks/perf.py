"""The runner against the provider's polling recipe and against itself on a fixed schedule,
at real time, on every duration profile of the simulator: identical job lists, each run
against its own fresh simulator with the real API's shape (1,000 live-task slots, 10,000
requests per minute).

    python benchmarks/perf.py [--jobs 3000] [--concurrency 1000] [--time-scale 1.0]
        [--profiles docs,slow,mixture,drift,stragglers] [--scenarios 2k,4k-mix]
        [--modes poll,callback,callback-lossy,fixed,naive,naive-shared,naive-backoff,
                 poll-resumed]
        [--cb-drop 0.02] [--cb-duplicate 0.05]
    python benchmarks/perf.py --jobs 300 --concurrency 100 --time-scale 0.2 \\
        --profiles docs,mixture --modes poll,fixed,naive-shared          # smoke run

**Profiles** (the simulator's ``--profile``; see its help): ``docs`` (2K 25-35 s, 4K
40-55 s), ``slow`` (twice that), ``mixture`` (half x0.5, half x1.2), ``drift`` (x1.6 for
tasks created 90 s or more after the simulator started), ``stragglers`` (2 % take 3-5
times as long). **Scenarios**: ``2k`` (every job 2K, one image) and ``4k-mix``
(``--share-4k`` of them 4K).

**Modes**:

* ``poll``: the runner as shipped (adaptive polling).
* ``callback``: the runner with webhooks, every webhook delivered once.
* ``callback-lossy``: the same, with ``--cb-drop`` of the webhooks never sent and
  ``--cb-duplicate`` sent twice (the simulator's ``p_cb_drop``/``p_cb_duplicate``).
* ``fixed``: the runner with ``polling: {schedule: fixed}``: the recipe's initial delay and
  interval with jitter, no learning, under the runner's own limiter and request budget.
  A runner that does not know the key yet exits 2, reported as that run's ``error``.
* ``naive``: the recipe as the API page gives it (``naive.py``: wait 20 s, poll every
  3 s, a 429 waits ``Retry-After`` and retries).
* ``naive-shared``: the same recipe behind one shared ``aiolimiter`` bucket at the key's
  rate (``naive.py --shared-limit``), what a skilled user writes: no 429 expected.
* ``naive-backoff``: the recipe that also doubles its wait on repeated 429s.
* ``poll-resumed``: a resumed run's first wave. The runner in poll mode runs a manifest
  of ``--jobs`` jobs to the end; then ``--jobs`` more jobs are added to the same
  manifest and the same command runs again on the same output folder against the same
  simulator (on ``drift``, the second run meets the drifted durations). Reported: both
  runs' figures, the resumed run's alone (its own ledger events and request counts).

Against a window that counts rejected requests, ``naive`` can lock up for good once the
window fills (every slot retrying every second keeps it full); such a run is ended after
90 scaled seconds plus the profile's longest task without progress and reported as
``stalled``, with efficiency 0 (its makespan has no end).

**Per run**: makespan ``efficiency`` (the makespan of a client with no detection lag over
the measured one, first submission to the last result known: the simulator draws each
task's duration as it is created, so that client's makespan is greedy list scheduling of
the observed durations in creation order; submission latency keeps every client a little
below 1); slot utilisations (below); API requests
per job (submissions and polls, from the simulator's counters, 429s included); share of the
request budget used over the makespan; ``http_429``; detection lag p50/p95 (completion
to the client knowing); CPU seconds per 1,000 jobs and peak RSS of the client's process
alone; exit code; images byte-identical to what was served.

**Slot utilisation** (``common.utilisation_figures``), from the API's ``createTime`` and
``completeTime`` of each task: a slot is busy while its task runs at the API, idle from
its completion until the client has found it and its next task is created, so detection
lag and submission delay are what lowers it.

* ``steady_utilisation``: over the window from the first submission to the last (while
  there is always more to submit), the tasks' run time inside the window over
  ``concurrency`` times its length.
* ``first_wave_utilisation`` / ``after_first_wave_utilisation``: per slot cycle. Order
  the tasks by completion (``i`` = 1, 2, ...) and the creations by time: creation
  ``concurrency + i`` is the refill of completion ``i`` (the API holds at most
  ``concurrency`` live tasks, so it cannot come earlier). Cycle ``i`` is task ``i``'s run
  (``d_i``, creation to completion) then the gap to its refill (``g_i``); the
  utilisation of a set of cycles is ``sum(d) / sum(d + g)``. The first wave is the
  cycles of the first ``concurrency`` completions (1,000 at the defaults), the rest those
  of every later completion that was refilled. ``first_wave_refill_gap_s`` and
  ``after_first_wave_refill_gap_s`` are the mean ``g`` of each. (Per cycle rather than
  over a window of time, because the first wave's completions all fall within the
  spread of durations, 10 s for 25-35 s tasks: over that window the same detection lag
  would cost three times what it costs in the steady state.)

``poll-resumed`` compares the resumed run's two: ``first_wave_gap`` is
``after_first_wave_utilisation - first_wave_utilisation`` and the check "the first wave
within 0.01 of the steady state" is ``first_wave_gap <= 0.01`` (a first wave better than
the steady state passes).

**Per profile and scenario**, ``ratios``: each runner mode's efficiency and requests per
job over ``naive``'s, ``naive-shared``'s and ``fixed``'s (null where a figure is missing,
a run failed, or the naive client locked up). **Top level**, ``checks``: the issue's
targets as booleans, null when what they need was not run (keys in :func:`checks`).

Durations, the request window and the polling settings are all multiplied by
``--time-scale`` (default 1.0, real time: what the figures are quoted at; 0.5 runs the
same load in half the wall time, but the runner's CPU and the network's latency then
weigh twice as much). ``--rate`` defaults to 10 requests per slot per minute (10,000 for
1,000 slots), so a small smoke run keeps the same pressure on the budget. Every process
runs a copy of ``runner/`` taken at start (``--live-tree`` to use the working tree), so
edits made meanwhile do not mix versions.

At real time a run of 3,000 jobs takes about 2 minutes (the 4K mix about 3, ``slow``
about 4, ``poll-resumed`` twice a run), one after another: the defaults (5 profiles, 2
scenarios, 8 modes) take about 4 hours; ``--profiles docs --scenarios 2k`` about 20
minutes. The smoke run above is 12 runs of about 25 s: about 5 minutes (``--scenarios
2k`` halves it). Prints one JSON object.
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

from runner.sim.config import (
    DRIFT_FACTOR,
    MIXTURE_SLOW_FACTOR,
    PROFILES,
    SLOW_FACTOR,
    STRAGGLER_FACTOR,
    SimConfig,
)

SCENARIOS = {"2k": 0.0, "4k-mix": None}  # None: --share-4k
MODES = (
    "poll",
    "callback",
    "callback-lossy",
    "fixed",
    "naive",
    "naive-shared",
    "naive-backoff",
    "poll-resumed",
)
RUNNER_MODES = ("poll", "callback", "callback-lossy", "fixed")
BASES = ("naive", "naive_shared", "fixed")  # what the runner's modes are compared with
NAIVE = Path(__file__).with_name("naive.py")
FIRST_WAVE_TOLERANCE = 0.01


def longest_task_s(profile: str) -> float:
    """The longest a task can take on ``profile`` (simulated seconds, 4K)."""
    cfg = SimConfig()
    factor = {
        "slow": SLOW_FACTOR,
        "mixture": MIXTURE_SLOW_FACTOR,
        "drift": DRIFT_FACTOR,
        "stragglers": STRAGGLER_FACTOR[1],
    }.get(profile, 1.0)
    return cfg.pending_s[1] + cfg.gen_4k_s[1] * factor


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


def stats_since(after: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """The simulator's counters of what happened between two ``/_sim/stats`` answers:
    requests, tasks created and submissions per prompt (``peak_live`` stays the
    server's)."""
    if before is None:
        return after
    requests = {
        endpoint: {
            status: n - before["requests"].get(endpoint, {}).get(status, 0)
            for status, n in counts.items()
        }
        for endpoint, counts in after["requests"].items()
    }
    prompts = {
        prompt: n - before["submissions_per_prompt"].get(prompt, 0)
        for prompt, n in after["submissions_per_prompt"].items()
    }
    return {
        **after,
        "requests": requests,
        "tasks_created": after["tasks_created"] - before["tasks_created"],
        "submissions_per_prompt": {p: n for p, n in prompts.items() if n},
    }


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


def runner_manifest(
    mode: str, folder: Path, jobs: list[dict[str, Any]], args: argparse.Namespace
) -> Path:
    scale = args.time_scale
    api: dict[str, Any] = {"mode": "callback" if mode.startswith("callback") else "poll"}
    if api["mode"] == "callback":
        # The receiver binds an ephemeral loopback port; with a loopback base URL the
        # runner derives the URL it gives the API from it.
        api["callback"] = {"listen": "127.0.0.1:0"}
    polling: dict[str, Any] = {
        "initial_delay": 20 * scale,
        "interval": 3 * scale,
        "timeout": 600 * scale,
    }
    if mode == "fixed":
        polling["schedule"] = "fixed"
    return write_campaign(
        folder,
        jobs,
        api=api,
        limits={"concurrency": args.concurrency, "rate": args.rate, "rate_period": 60 * scale},
        polling=polling,
    )


def run_runner_once(
    mode: str,
    base_url: str,
    manifest: Path,
    jobs: int,
    args: argparse.Namespace,
    stats_before: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the runner on ``manifest`` to the end; its figures, counting only what this
    run did (``stats_before``: the simulator's counters before it; the ledger's events
    from its start), over ``jobs`` jobs."""
    started = time.time()
    proc = run_runner(manifest, "--base-url", base_url, timeout_s=args.run_timeout)
    stats = stats_since(sim_get(base_url, "/_sim/stats"), stats_before)
    out = manifest.parent / "out" / "bench"
    report: dict[str, Any] = process_figures(proc, jobs)
    report.update(figures_from_stats(stats, jobs))
    if mode.startswith("callback"):
        report["webhooks"] = {
            k: stats[k]
            for k in (
                "callbacks_sent",
                "callbacks_delivered",
                "callbacks_failed",
                "callbacks_dropped",
            )
            if k in stats
        }
    if (out / "ledger.jsonl").is_file():
        since = started if stats_before is not None else None
        report.update(makespan_efficiency(out, args.concurrency, since))
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
    add_budget_use(report, jobs, args)
    return report


def run_runner_mode(
    mode: str, base_url: str, folder: Path, jobs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    return run_runner_once(
        mode, base_url, runner_manifest(mode, folder, jobs, args), len(jobs), args
    )


def run_resumed(
    base_url: str, folder: Path, jobs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """``poll-resumed``: the first half of ``jobs``, then all of them on the same folder."""
    half = len(jobs) // 2
    first = run_runner_once(
        "poll", base_url, runner_manifest("poll", folder, jobs[:half], args), half, args
    )
    if "error" in first:
        return {"first_run": first, "error": "the first run failed"}
    before = sim_get(base_url, "/_sim/stats")
    manifest = runner_manifest("poll", folder, jobs, args)  # the same manifest, jobs added
    resumed = run_runner_once("poll", base_url, manifest, len(jobs) - half, args, before)
    report: dict[str, Any] = {"first_run": first, "resumed": resumed}
    wave = resumed.get("first_wave_utilisation")
    after = resumed.get("after_first_wave_utilisation")
    report["first_wave_utilisation"] = wave
    report["after_first_wave_utilisation"] = after
    if isinstance(wave, float) and isinstance(after, float):
        gap = round(after - wave, 4)
        report["first_wave_gap"] = gap
        report["first_wave_within_0_01"] = gap <= FIRST_WAVE_TOLERANCE
    if "error" in resumed:
        report["error"] = "the resumed run failed"
    # The resumed run's own figures lead, for the ratios and the checks.
    for key in ("efficiency", "api_requests_per_job", "http_429"):
        if key in resumed:
            report[key] = resumed[key]
    return report


def run_naive_mode(
    mode: str,
    base_url: str,
    folder: Path,
    jobs: list[dict[str, Any]],
    args: argparse.Namespace,
    profile: str,
) -> dict[str, Any]:
    scale = args.time_scale
    folder.mkdir(parents=True, exist_ok=True)
    jobs_file = folder / "jobs.jsonl"
    jobs_file.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    out, report_file = folder / "out", folder / "naive.json"
    options: dict[str, Any] = {
        "--base-url": base_url,
        "--jobs-file": jobs_file,
        "--out": out,
        "--concurrency": args.concurrency,
        "--initial-delay": 20 * scale,
        "--interval": 3 * scale,
        "--retry-after": 1 * scale,
        "--backoff": 0.5 * scale,
        "--timeout": 600 * scale,
        "--on-429": "backoff" if mode == "naive-backoff" else "retry-after",
        "--max-backoff": 30 * scale,
        # Nothing submitted or finished for a minute and a half beyond the longest task
        # of the profile: locked up, not slow.
        "--stall": (90 + longest_task_s(profile)) * scale,
        "--report": report_file,
    }
    if mode == "naive-shared":
        options["--shared-limit"] = args.rate
        options["--shared-period"] = 60 * scale
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
        "steady_utilisation",
        "first_wave_utilisation",
        "after_first_wave_utilisation",
        "first_wave_refill_gap_s",
        "after_first_wave_refill_gap_s",
        "polls_per_job",
    ):
        if key in naive:
            report[key] = naive[key]
    records = naive["records"]
    inputs = {job["id"]: job for job in jobs}
    report["images"] = verify_files(
        (
            (rec["task_id"], index, out / path, inputs.get(rec["id"]))
            for rec in records
            for index, path in enumerate(rec.get("files", ()))
        ),
        args.image_bytes,
    )
    report["jobs"] = naive["states"]
    add_budget_use(report, len(jobs), args)
    return report


def add_budget_use(report: dict[str, Any], jobs: int, args: argparse.Namespace) -> None:
    """Share of the request budget spent over the measured makespan."""
    makespan = report.get("measured_makespan_s")
    if makespan and "api_requests_per_job" in report:
        allowed = args.rate * makespan / (60 * args.time_scale)
        report["request_budget_used"] = round(report["api_requests_per_job"] * jobs / allowed, 3)


def ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(a / b, 3)


def ratios(mode: str, runs: dict[str, Any]) -> dict[str, Any]:
    """``mode``'s efficiency and requests per job over each base's (:data:`BASES`). None
    where a figure is missing, a run failed, or the naive client locked up (its makespan
    has no end)."""
    runner = runs[mode]
    out: dict[str, Any] = {}
    for base in BASES:
        if base not in runs or base == mode:
            continue
        other = runs[base]
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


def run_cell(profile: str, name: str, share_4k: float, args: argparse.Namespace) -> dict[str, Any]:
    """Every mode on one profile and scenario, each against a fresh simulator."""
    resumed_jobs = make_jobs(2 * args.jobs, share_4k, args.seed)
    jobs = make_jobs(args.jobs, share_4k, args.seed)
    scale = args.time_scale
    sim_options = [
        "--time-scale", str(scale), "--rate", str(args.rate), "--rate-period", str(60 * scale),
        "--concurrency", str(args.concurrency), "--image-bytes", str(args.image_bytes),
        "--seed", str(args.seed), "--profile", profile,
    ]  # fmt: skip
    lossy = ["--p-cb-drop", str(args.cb_drop), "--p-cb-duplicate", str(args.cb_duplicate)]
    cell: dict[str, Any] = {
        "jobs": len(jobs),
        "jobs_4k": sum(j["resolution"] == "4K" for j in jobs),
        "runs": {},
    }
    runs = cell["runs"]
    with tempfile.TemporaryDirectory(prefix=f"perf-{profile}-{name}-") as tmp:
        for mode in args.modes:
            key = mode.replace("-", "_")
            started = time.monotonic()
            print(f"perf: {profile} {name} {mode} ...", file=sys.stderr, flush=True)
            options = sim_options + (lossy if mode == "callback-lossy" else [])
            try:
                # A fresh simulator per run: its counters and its live tasks start at zero.
                with simulator(*options) as base_url:
                    folder = Path(tmp) / mode
                    if mode.startswith("naive"):
                        runs[key] = run_naive_mode(mode, base_url, folder, jobs, args, profile)
                    elif mode == "poll-resumed":
                        runs[key] = run_resumed(base_url, folder, resumed_jobs, args)
                    else:
                        runs[key] = run_runner_mode(mode, base_url, folder, jobs, args)
            except Exception as exc:  # report it and carry on with the next run
                runs[key] = {"error": f"{type(exc).__name__}: {exc}"}
            figure = runs[key].get("efficiency")
            print(
                f"perf: {profile} {name} {mode} done in {time.monotonic() - started:.0f} s"
                f" (efficiency {figure})",
                file=sys.stderr,
                flush=True,
            )
    cell["ratios"] = {
        mode.replace("-", "_"): ratios(mode.replace("-", "_"), runs)
        for mode in (*RUNNER_MODES, "poll-resumed")
        if mode.replace("-", "_") in runs
    }
    return cell


def _all(values: list[bool | None]) -> bool | None:
    """True if every measured value holds, None if nothing was measured."""
    measured = [v for v in values if v is not None]
    return all(measured) if measured else None


def _holds(run: dict[str, Any] | None, key: str, test: Any) -> bool | None:
    """``test(run[key])`` for a runner run: None if it was not run, False if it failed
    or lacks the figure."""
    if run is None:
        return None
    value = run.get(key)
    if "error" in run or not isinstance(value, int | float):
        return False
    return bool(test(value))


def _at_least(run: dict[str, Any] | None, base: dict[str, Any] | None) -> bool | None:
    """The runner's efficiency at least the base's; None if the base was not run or
    failed (a base that locked up has efficiency 0)."""
    if base is None or "error" in base or not isinstance(base.get("efficiency"), int | float):
        return None
    return _holds(run, "efficiency", lambda e: e >= base["efficiency"])


def checks(profiles: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """The issue's targets: True or False where measured, None where what a target needs
    was not run. A failed runner run fails its targets; a failed base (``naive``,
    ``naive_shared``, ``fixed``) leaves its comparison None.

    * ``poll_docs_efficiency_ge_0_95``, ``poll_docs_requests_per_job_le_5``,
      ``poll_docs_zero_429``: poll mode on ``docs``, scenario ``2k``.
    * ``poll_resumed_first_wave_within_0_01``: ``poll-resumed`` on ``docs``, ``2k``.
    * per profile P run: ``P_poll_ge_naive``, ``P_poll_ge_naive_shared``,
      ``P_poll_ge_fixed`` (efficiency), ``P_poll_zero_429``, each on every scenario run.
    * ``poll_mixture_efficiency_ge_0_93``: on every scenario of ``mixture``.
    * ``callback_efficiency_ge_0_99`` (every webhook delivered once) and
      ``callback_lossy_efficiency_ge_0_98``: on every profile and scenario run.
    * ``all_measured``: every check above that is not None holds.
    """
    out: dict[str, bool | None] = {}
    docs_2k = profiles.get("docs", {}).get("2k", {}).get("runs", {})
    poll = docs_2k.get("poll")
    out["poll_docs_efficiency_ge_0_95"] = _holds(poll, "efficiency", lambda v: v >= 0.95)
    out["poll_docs_requests_per_job_le_5"] = _holds(poll, "api_requests_per_job", lambda v: v <= 5)
    out["poll_docs_zero_429"] = _holds(poll, "http_429", lambda v: v == 0)
    resumed = docs_2k.get("poll_resumed")
    out["poll_resumed_first_wave_within_0_01"] = _holds(
        resumed, "first_wave_gap", lambda v: v <= FIRST_WAVE_TOLERANCE
    )
    for profile, cells in profiles.items():
        runs = [cell["runs"] for cell in cells.values()]
        for base in BASES:
            out[f"{profile}_poll_ge_{base}"] = _all(
                [_at_least(r.get("poll"), r.get(base)) for r in runs]
            )
        out[f"{profile}_poll_zero_429"] = _all(
            [_holds(r.get("poll"), "http_429", lambda v: v == 0) for r in runs]
        )
    mixture = [cell["runs"] for cell in profiles.get("mixture", {}).values()]
    out["poll_mixture_efficiency_ge_0_93"] = _all(
        [_holds(r.get("poll"), "efficiency", lambda v: v >= 0.93) for r in mixture]
    )
    every = [cell["runs"] for cells in profiles.values() for cell in cells.values()]
    out["callback_efficiency_ge_0_99"] = _all(
        [_holds(r.get("callback"), "efficiency", lambda v: v >= 0.99) for r in every]
    )
    out["callback_lossy_efficiency_ge_0_98"] = _all(
        [_holds(r.get("callback_lossy"), "efficiency", lambda v: v >= 0.98) for r in every]
    )
    out["all_measured"] = _all(list(out.values()))
    return out


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
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--profiles", type=csv_choice(PROFILES), default=list(PROFILES))
    ap.add_argument("--scenarios", type=csv_choice(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument("--modes", type=csv_choice(MODES), default=list(MODES))
    ap.add_argument("--share-4k", type=float, default=0.3, help="4K share of 4k-mix")
    ap.add_argument("--cb-drop", type=float, default=0.02, help="callback-lossy: webhooks lost")
    ap.add_argument(
        "--cb-duplicate", type=float, default=0.05, help="callback-lossy: webhooks sent twice"
    )
    ap.add_argument("--image-bytes", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--run-timeout", type=float, default=1800, help="wall seconds per run")
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
            "profiles": args.profiles,
            "scenarios": args.scenarios,
            "modes": args.modes,
            "share_4k": args.share_4k,
            "polling": {
                "initial_delay_s": round(20 * args.time_scale, 6),
                "interval_s": round(3 * args.time_scale, 6),
            },
            "callback_lossy": {"p_cb_drop": args.cb_drop, "p_cb_duplicate": args.cb_duplicate},
            "image_bytes": args.image_bytes,
            "seed": args.seed,
        },
        "profiles": {},
    }
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="perf-code-") as code:
        try:
            if not args.live_tree:
                report["code"] = snapshot_code(Path(code))
            for profile in args.profiles:
                cells = report["profiles"][profile] = {}
                for name in args.scenarios:
                    share = SCENARIOS[name]
                    share_4k = args.share_4k if share is None else share
                    cells[name] = run_cell(profile, name, share_4k, args)
        finally:
            os.chdir(cwd)
    report["checks"] = checks(report["profiles"])
    report["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
