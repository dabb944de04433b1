"""3,000 jobs through 1,000 live-task slots against the simulator, then the same command
again: every image byte-identical, zero 429s, no job submitted twice, and a second run
that sends no submission and no download.

    python benchmarks/scale_run.py [--jobs 3000] [--concurrency 1000] [--time-scale 0.5]
    python benchmarks/scale_run.py --mode callback --cb-duplicate 0.05 --cb-drop 0.02

The simulator's durations and the request window are scaled together, so the load has
the real API's shape (1,000 slots, 10,000 requests per scaled minute) at a fraction of
the wall time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import (
    makespan_efficiency,
    run_runner,
    sim_get,
    simulator,
    verify_images,
    write_campaign,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--time-scale", type=float, default=0.5)
    ap.add_argument("--image-bytes", type=int, default=16384)
    ap.add_argument("--mode", choices=("poll", "callback"), default="poll")
    ap.add_argument("--cb-duplicate", type=float, default=0.0, help="share of webhooks sent twice")
    ap.add_argument("--cb-drop", type=float, default=0.0, help="share of webhooks never sent")
    args = ap.parse_args()
    scale = args.time_scale
    period = 60 * scale
    jobs = [{"prompt": f"catalogue item {i}, studio light"} for i in range(args.jobs)]
    with tempfile.TemporaryDirectory() as tmp, simulator(
        "--time-scale", str(scale), "--rate", "10000", "--rate-period", str(period),
        "--image-bytes", str(args.image_bytes), "--seed", "1",
        "--p-cb-duplicate", str(args.cb_duplicate), "--p-cb-drop", str(args.cb_drop),
    ) as base_url:  # fmt: skip
        api: dict[str, object] = {"mode": args.mode}
        if args.mode == "callback":
            api["callback"] = {"listen": "127.0.0.1:0"}
        manifest = write_campaign(
            Path(tmp),
            jobs,
            api=api,
            limits={"concurrency": args.concurrency, "rate": 10000, "rate_period": period},
            polling={
                "initial_delay": 20 * scale,
                "interval": 3 * scale,
                "timeout": 600 * scale,
            },
        )
        first = run_runner(manifest, "--base-url", base_url)
        stats = sim_get(base_url, "/_sim/stats")
        out = Path(tmp) / "out" / "bench"
        schedule = makespan_efficiency(out, args.concurrency)  # before a rerun compacts it
        second = run_runner(manifest, "--base-url", base_url)
        stats2 = sim_get(base_url, "/_sim/stats")
        summary = json.loads((out / "summary.json").read_text())
        requests = stats["requests"]
        api_requests = sum(requests.get("generate", {}).values()) + sum(
            requests.get("status", {}).values()
        )
        report = {
            "mode": args.mode,
            "webhooks": {
                "duplicated_share": args.cb_duplicate,
                "dropped_share": args.cb_drop,
                "dropped": stats.get("callbacks_dropped", 0),
            },
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "time_scale": scale,
            "first_run": {k: v for k, v in first.items() if k != "stderr_tail"},
            "images": verify_images(out, args.image_bytes),
            "http_429": sum(v.get("429", 0) for v in requests.values()),
            "tasks_created": stats["tasks_created"],
            "submitted_twice": sum(1 for n in stats["submissions_per_prompt"].values() if n > 1),
            "peak_live_tasks": stats["peak_live"],
            "api_requests_per_job": round(api_requests / args.jobs, 3),
            "status_requests_per_job": round(
                sum(requests.get("status", {}).values()) / args.jobs, 3
            ),
            **schedule,
            "second_run": {
                "exit_code": second["exit_code"],
                "new_submissions": stats2["tasks_created"] - stats["tasks_created"],
                "new_downloads": stats2["images_served"] - stats["images_served"],
            },
            "summary_exit_code": summary["exit_code"],
        }
        if first["exit_code"] != 0:
            report["stderr_tail"] = first["stderr_tail"]
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
