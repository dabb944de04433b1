"""What every fault test checks after a run, whatever the fault (helpers of test_faults.py,
test_hostile.py and test_secrets.py).

The invariants of the fault suite:

* no job lost: after a finished run (exit 0 or 1) every job of the manifest has reached an
  end in ``results.jsonl``; after an early stop (exit 4) the next run picks up the rest;
* no image partial or wrong: every file under ``images/`` is byte-identical to one the
  simulator served, and no ``.part`` is left there;
* nothing written outside the output folder (a listing of the test's folder before and
  after the run);
* every duplicate submission the simulator saw is counted as uncertain in the summary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
from runs import assert_images_match_server, out_dir

from runner.sim import SimServer
from runner.state.ledger import read_index
from runner.state.record import Phase


def listing(root: Path) -> set[str]:
    """Every file and folder under ``root``, as relative paths."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def results(path: Path) -> dict[str, dict[str, Any]]:
    file = out_dir(path) / "results.jsonl"
    if not file.exists():
        return {}
    return {r["id"]: r for r in map(orjson.loads, file.read_bytes().splitlines())}


def summary(path: Path) -> dict[str, Any]:
    data = orjson.loads((out_dir(path) / "summary.json").read_bytes())
    assert isinstance(data, dict)
    return data


def duplicates(sim: SimServer) -> int:
    """Submissions the simulator received beyond one per prompt."""
    return sum(n - 1 for n in sim.stats.submissions_per_prompt.values())


def assert_invariants(
    path: Path, sim: SimServer, jobs: int, before: set[str], code: int, erased: int = 0
) -> dict[str, dict[str, Any]]:
    """The suite's invariants (module docstring) after a run that exited ``code``; returns
    the results by job id. ``erased``: submissions whose ledger lines the test destroyed
    (no runner can know of those, so each may be paid again unreported)."""
    out = out_dir(path)
    root = path.parent
    outside = {
        p for p in listing(root) - before if not (root / p).is_relative_to(out) and p != "out"
    }
    assert not outside, f"written outside the output folder: {sorted(outside)}"
    if (out / "images").exists():
        assert_images_match_server(out, sim)
        parts = [p for p in (out / "images").rglob("*") if p.name.endswith(".part")]
        assert not parts, "no partial file under images/"
    ended = results(path)
    if code in (0, 1):  # the run finished: every job reached an end
        assert len(ended) == jobs, "no job lost"
    else:  # stopped early: what has a task is still in the ledger for the next run
        index, _ = read_index(out)
        for job_id, rec in index.items():
            if rec.task_id is not None and rec.phase is not Phase.DONE:
                assert job_id not in ended or ended[job_id]["state"] == "failed"
    if code == 0:
        assert all(r["state"] == "done" for r in ended.values())
    if code == 1:
        assert any(r["state"] in ("failed", "lost") for r in ended.values())
    for r in ended.values():
        if r["state"] == "failed":
            assert r["fail_code"], "a failed job records why"
    s = summary(path)
    assert s["exit_code"] == code
    reported = s["uncertain_submissions"]["all_runs"]
    assert duplicates(sim) <= reported + erased, "every duplicate reported"
    return ended


def tally(test: str, sim: SimServer, **extra: Any) -> None:
    """With ``FAULT_TALLY=<file>`` set, append what the simulator injected during this test
    (one JSON line), for the table of docs/RELIABILITY.md. A no-op otherwise."""
    target = os.environ.get("FAULT_TALLY")
    if not target:
        return
    line = {"test": test, "faults": dict(sim.stats.faults), "duplicates": duplicates(sim)}
    line["stuck"] = sum(1 for t in sim.tasks.values() if t.stuck)
    line.update(extra)
    with open(target, "ab") as f:
        f.write(orjson.dumps(line) + b"\n")
