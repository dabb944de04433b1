"""Money under every fault at once: many cycles of a campaign whose runs are killed,
signalled or cut by a deadline while the API answers 5xx after creating tasks, resets
connections, sends unreadable status answers, lets another client hold part of the
live-task limit, and jobs are edited between runs. Then one clean run, and the tally
against the simulator's own billing:

    python benchmarks/money_tally.py [--cycles 40] [--jobs 400] [--seed 3]

Prints one JSON object: images the simulator billed, images the runner counted as paid
(and the upper bound it reports for uncertain submissions), images on disk and in
summary.json, and ``jobs_paid_twice_unreported``: jobs that the API billed more often
than their content versions plus their ``uncertain`` records explain (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import run_runner, sim_get, simulator, write_campaign

from runner.state.ledger import read_index

FAULTS = ("kill", "term", "deadline", "5xx_after_create", "reset_after", "bad_status",
          "foreign_live", "edit", "clean")  # fmt: skip


def sim_config(base_url: str, **changes: Any) -> None:
    origin = base_url.rsplit("/api/", 1)[0]
    req = urllib.request.Request(
        origin + "/_sim/config", data=json.dumps(changes).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--time-scale", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    scale = args.time_scale
    jobs = [
        {"id": f"job-{i}", "prompt": f"money tally {i}", "max_images": 1 + i % 3}
        for i in range(args.jobs)
    ]
    edits: Counter[str] = Counter()
    tried: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp, simulator(
        "--time-scale", str(scale), "--seed", str(args.seed), "--retry-after", "0.05",
    ) as base_url:  # fmt: skip
        settings: dict[str, Any] = {
            "limits": {"concurrency": args.concurrency},
            "polling": {"initial_delay": 20 * scale, "interval": 3 * scale, "timeout": 30},
            "retry": {"slot_wait": 5},
        }
        manifest = write_campaign(Path(tmp), jobs, **settings)
        out = Path(tmp) / "out" / "bench"
        env = {**os.environ, "APIXO_API_KEY": "bench-key"}
        for _ in range(args.cycles):
            fault = rng.choice(FAULTS)
            tried[fault] += 1
            sim_config(
                base_url,
                p_5xx_after_create=0.2 if fault == "5xx_after_create" else 0.0,
                p_reset_after=0.2 if fault == "reset_after" else 0.0,
                bad_status_first=1 if fault == "bad_status" else 0,
                foreign_live=args.concurrency // 2 if fault == "foreign_live" else 0,
                foreign_hold_s=40.0,
            )
            if fault == "edit":
                for job in rng.sample(jobs, 5):
                    edits[job["id"]] += 1
                    job["prompt"] = f"{job['prompt']} (edit {edits[job['id']]})"
                manifest = write_campaign(Path(tmp), jobs, **settings)
            argv = [sys.executable, "-m", "runner", str(manifest), "--quiet",
                    "--base-url", base_url]  # fmt: skip
            if fault == "deadline":
                argv += ["--deadline", f"{rng.uniform(0.2, 2):.2f}",
                         "--drain", rng.choice(["0", "0.5", "30"])]  # fmt: skip
            proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
            if fault in ("kill", "term"):
                time.sleep(rng.uniform(0.3, 3.0))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        sim_config(base_url, p_5xx_after_create=0.0, p_reset_after=0.0, bad_status_first=0,
                   foreign_live=0)  # fmt: skip
        final = run_runner(manifest, "--base-url", base_url, "--retry-failed")
        stats = sim_get(base_url, "/_sim/stats")
        summary = json.loads((out / "summary.json").read_text())
        index, _ = read_index(out)
        per_prompt: dict[str, int] = stats["submissions_per_prompt"]
        unreported = 0
        for i, job in enumerate(jobs):
            base = f"money tally {i}"
            versions = [p for p in per_prompt if p == base or p.startswith(base + " (edit")]
            tasks = sum(per_prompt[p] for p in versions)
            rec = index.get(job["id"])
            uncertain = rec.uncertain if rec is not None else 0
            if tasks - len(versions) > uncertain:
                unreported += 1
        files = [p for p in (out / "images").rglob("*") if p.is_file()]
        report = {
            "cycles": args.cycles,
            "faults_tried": dict(tried),
            "jobs": args.jobs,
            "final_exit_code": final["exit_code"],
            "images_billed_by_simulator": stats["images_billed"],
            "tasks_created": stats["tasks_created"],
            "images_counted_paid": summary["images_paid"],
            "uncertain_submissions": summary["uncertain_submissions"],
            "images_on_disk": len(files),
            "images_reported": summary["images"],
            "billing_within_bound": summary["images_paid"]
            <= stats["images_billed"]
            <= summary["images_paid"] + summary["uncertain_submissions"]["images_at_most"],
            "jobs_paid_twice_unreported": unreported,
            "job_states": summary["jobs"],
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
