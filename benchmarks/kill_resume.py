"""SIGKILL the runner at random moments, again and again, then let it finish: how many
submissions can a kill leave uncertain, and is anything lost or partial?

    python benchmarks/kill_resume.py [--cycles 20] [--jobs 1500] [--latency 0.3]

Every API answer of the simulator is delayed by ``--latency`` real seconds (a real
network's round trip), so submissions really are on the wire when the kill lands. After
each kill the ledger is read: each submission written but never answered is one that the
next run must count as uncertain. Prints one JSON object.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import read_jsonl, run_runner, sim_get, simulator, verify_images, write_campaign

from runner.run.submit import MAX_ON_WIRE
from runner.state.ledger import read_index
from runner.state.record import Phase


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--time-scale", type=float, default=0.1)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--max-wait", type=float, default=4.0, help="latest kill moment (s)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    scale = args.time_scale
    period = 60 * scale
    jobs = [{"prompt": f"kill test {i}", "max_images": 1 + i % 3} for i in range(args.jobs)]
    per_kill: list[int] = []
    with tempfile.TemporaryDirectory() as tmp, simulator(
        "--time-scale", str(scale), "--rate", "10000", "--rate-period", str(period),
        "--p-slow", "1", "--slow", str(args.latency), "--seed", str(args.seed),
    ) as base_url:  # fmt: skip
        manifest = write_campaign(
            Path(tmp),
            jobs,
            limits={"concurrency": args.concurrency, "rate": 10000, "rate_period": period},
            polling={"initial_delay": 20 * scale, "interval": 3 * scale, "timeout": 60},
        )
        out = Path(tmp) / "out" / "bench"
        env = {**os.environ, "APIXO_API_KEY": "bench-key"}
        for _ in range(args.cycles):
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", str(manifest), "--quiet", "--base-url", base_url],
                env=env,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.3, args.max_wait))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            index, _ = read_index(out)
            per_kill.append(sum(1 for r in index.values() if r.phase is Phase.SUBMITTING))
        final = run_runner(manifest, "--base-url", base_url)
        stats = sim_get(base_url, "/_sim/stats")
        summary = json.loads((out / "summary.json").read_text())
        results = read_jsonl(out / "results.jsonl")
        partial = [p for p in (out / "images").rglob("*") if p.is_file() and p.suffix == ".part"]
        report = {
            "cycles": args.cycles,
            "jobs": args.jobs,
            "latency_s": args.latency,
            "final_exit_code": final["exit_code"],
            "jobs_done": sum(1 for r in results if r["state"] == "done"),
            "jobs_lost": args.jobs - len(results),
            "images": verify_images(out, 16384),
            "partial_files_in_images": len(partial),
            "uncertain_per_kill": {
                "max": max(per_kill),
                "mean": round(sum(per_kill) / len(per_kill), 2),
                "all": per_kill,
            },
            "uncertain_reported": summary["uncertain_submissions"]["all_runs"],
            "duplicate_submissions": sum(stats["submissions_per_prompt"].values()) - args.jobs,
            "submissions_on_wire_cap": MAX_ON_WIRE,
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
