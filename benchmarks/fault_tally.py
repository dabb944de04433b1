"""Run the fault suite (``pytest -m faults``) once per simulator seed and tally what the
simulator injected, test by test: the figures of docs/RELIABILITY.md.

    python benchmarks/fault_tally.py [--seeds 5]

Each pass sets ``SIM_SEED`` (the simulator's random draws) and ``FAULT_TALLY`` (where each
test appends what was injected). A pass counts as clean when pytest exits 0, i.e. every
invariant held: no job lost, no image partial or wrong, nothing written outside the
output folder, every duplicate submission reported. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    passes: list[dict[str, Any]] = []
    runs: Counter[str] = Counter()
    faults: defaultdict[str, Counter[str]] = defaultdict(Counter)
    extra: defaultdict[str, Counter[str]] = defaultdict(Counter)
    with tempfile.TemporaryDirectory() as tmp:
        tally = Path(tmp) / "tally.jsonl"
        for seed in range(1, args.seeds + 1):
            env = {**os.environ, "SIM_SEED": str(seed), "FAULT_TALLY": str(tally)}
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-m", "faults", "-p", "no:cacheprovider"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            passes.append({"seed": seed, "exit_code": proc.returncode, "last": _last(proc)})
        for line in tally.read_text().splitlines():
            entry = json.loads(line)
            test = entry.pop("test")
            runs[test] += 1
            faults[test].update(entry.pop("faults"))
            extra[test].update({k: v for k, v in entry.items() if isinstance(v, int) and v})
    report = {
        "seeds": args.seeds,
        "passes": passes,
        "tests": {
            test: {"runs": runs[test], "injected": dict(faults[test]), **extra[test]}
            for test in sorted(runs)
        },
    }
    print(json.dumps(report, indent=2))


def _last(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else proc.stderr[-300:]


if __name__ == "__main__":
    main()
