"""Million-job scale: ``--dry-run`` of a 1,000,000-job JSONL manifest, the start-up of
``--dry-run``, ``--status`` and a resumed run beside a ledger of 997,000 done jobs, the
resume scan of a 1,000,000-line ledger, and the runner's memory during a run at 1,000 live
tasks.

    python benchmarks/million.py [--jobs 1000000] [--live 3000] [--run-s 60] [--skip-run]

Builds in a temporary folder:

* ``m.jsonl``: ``--jobs`` job lines (a prompt and, cycling, a resolution/aspect mix);
* a ledger of finished jobs written directly in the ledger's format: for the scan, one
  full ``done`` line per job (the shape a compacted ledger has), and for comparison the
  same number of lines as the five-event history ``submit task result file done``;
* for the live run, a ledger where every job but ``--live`` is done (all pointing at one
  image file on disk), so that the run has ``--live`` jobs to do at concurrency 1000
  against the simulator in its own process, stopped by ``--deadline`` after ``--run-s``.

Start-up (``startup``): each of ``--dry-run`` and ``--status`` twice, ``cold`` (the first
start after the campaign was written: no start-up index in ``<out>/.index/``, so the
manifest is checked and the ledger replayed whole, and the index is written) and ``warm``
(the next start, which reads the index); and a resumed run against the simulator, cold
and warm, timed from its start to the simulator's first generate request
(``first_submission_s``), then killed (its ledger keeps what it wrote: the warm run
replays that on top of the index): ``resumed_run`` with the ``--live`` jobs to do first
in the manifest, ``resumed_run_last_jobs_to_do`` with them last (a campaign run in
manifest order and stopped near its end, the usual case: 997,000 done jobs come first).

Prints one JSON object. Peak RSS of a child is its ``VmHWM`` sampled while it runs (its
``ru_maxrss`` from ``os.wait4`` would inherit the parent's high-water mark); for the live
run, ``rss_while_busy_mb`` is the largest RSS seen while at least 900 tasks were live on
the simulator (the peak includes loading the manifest)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))

from common import _vm_hwm_kb, sim_get, simulator, snapshot_code

RESOLUTIONS = ("2K", "2K", "4K")
ASPECTS = ("1:1", "16:9", "9:16", "4:3")


def write_manifest(path: Path, jobs: int) -> None:
    with path.open("wb") as f:
        for n in range(jobs):
            line = {
                "id": f"job-{n:07d}",
                "prompt": f"product shot number {n}, studio light",
                "resolution": RESOLUTIONS[n % 3],
                "aspect_ratio": ASPECTS[n % 4],
            }
            f.write(orjson.dumps(line) + b"\n")


def fingerprints(manifest: Path) -> Iterator[tuple[str, str]]:
    """(id, fingerprint) of every job, computed by the runner itself."""
    from runner.manifest.campaign import load_campaign

    for job in load_campaign(manifest).jobs():
        yield job.id, job.fingerprint


def done_line(job_id: str, fp: str, t: float, image: str) -> bytes:
    """One job's whole finished state in one line (a compacted ledger's shape)."""
    return orjson.dumps(
        {
            "e": "done",
            "job": job_id,
            "t": t,
            "fp": fp,
            "task": f"task-{job_id}",
            "imgs": 1,
            "submits": 1,
            "urls": [f"https://files.example/{job_id}/0.png"],
            "files": [{"i": 0, "path": image, "bytes": 70, "sha256": "ab" * 32}],
            "sub_t": t - 30,
            "create_ms": int(t * 1000) - 30000,
            "complete_ms": int(t * 1000) - 2000,
            "cost_ms": 28000,
        }
    )


def history_lines(job_id: str, fp: str, t: float, image: str) -> list[bytes]:
    """The same job as the five events a run appends."""
    task = f"task-{job_id}"
    events: list[dict[str, Any]] = [
        {"e": "submit", "job": job_id, "t": t - 30, "fp": fp, "imgs": 1},
        {"e": "task", "job": job_id, "t": t - 29, "task": task},
        {
            "e": "result",
            "job": job_id,
            "t": t - 2,
            "task": task,
            "urls": [f"https://files.example/{job_id}/0.png"],
            "create_ms": int(t * 1000) - 30000,
            "complete_ms": int(t * 1000) - 2000,
            "cost_ms": 28000,
        },
        {
            "e": "file",
            "job": job_id,
            "t": t - 1,
            "i": 0,
            "path": image,
            "bytes": 70,
            "sha256": "ab" * 32,
        },
    ]
    # The runner's done event carries the job's whole state (the same line as compacted)
    return [*(orjson.dumps(ev) for ev in events), done_line(job_id, fp, t, image)]


def write_ledgers(
    manifest: Path, folder: Path, live: int, lines: int, tail: Path
) -> dict[str, Path]:
    """The compacted ledger (every job but the first ``live`` done), one of ``lines``
    lines of five-event histories, and in the folder ``tail`` a compacted ledger of every
    job but the last ``live`` done (a campaign run in manifest order, stopped near its
    end: what a cron batch resumes)."""
    image = "images/shared.png"
    for where in (folder, tail):
        (where / "images").mkdir(parents=True, exist_ok=True)
        (where / image).write_bytes(b"\x89PNG" + b"\0" * 66)
    t = time.time() - 3600
    compact, history = folder / "ledger.jsonl", folder / "history.jsonl"
    jobs = sum(1 for _ in manifest.open("rb"))
    written = 0
    ledger_of_tail = tail / "ledger.jsonl"
    with compact.open("wb") as fc, history.open("wb") as fh, ledger_of_tail.open("wb") as ft:
        for n, (job_id, fp) in enumerate(fingerprints(manifest)):
            line = done_line(job_id, fp, t, image) + b"\n"
            if n >= live:
                fc.write(line)
            if n < jobs - live:
                ft.write(line)
            if written < lines:
                chunk = history_lines(job_id, fp, t, image)
                fh.write(b"".join(x + b"\n" for x in chunk))
                written += len(chunk)
    return {"compact": compact, "history": history}


def run_child(
    argv: list[str],
    env: dict[str, str],
    timeout_s: float,
    busy: Callable[[], bool] | None = None,
    until: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run a process to the end: exit code, wall time, peak RSS (sampled VmHWM), and the
    largest RSS seen while ``busy()`` held (e.g. while 1,000 tasks are live). With
    ``until``: the time from the start to when it first held (``until_s``), and the
    process is then killed."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    hwm_kb = busy_kb = 0
    until_s = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if until is not None and until_s is None and until():
            until_s = round(time.monotonic() - started, 2)
            hwm_kb = max(hwm_kb, _vm_hwm_kb(proc.pid))
            proc.kill()
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm_kb = max(hwm_kb, int(line.split()[1]))
                if line.startswith("VmRSS:") and busy is not None and busy():
                    busy_kb = max(busy_kb, int(line.split()[1]))
        if time.monotonic() - started > timeout_s:
            proc.kill()
        time.sleep(0.02 if until is not None else 0.05)
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    if until is not None:
        return {
            "first_submission_s": until_s,
            "peak_rss_mb": round(hwm_kb / 1024, 1),
            "stderr_tail": err.decode(errors="replace")[-600:] if until_s is None else "",
        }
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.monotonic() - started, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(hwm_kb / 1024, 1),
        "rss_while_busy_mb": round(busy_kb / 1024, 1),
        "stdout_tail": out.decode(errors="replace")[-400:],
        "stderr_tail": err.decode(errors="replace")[-600:],
    }


_SCAN = """
import json, resource, sys, time
from pathlib import Path
from runner.state.ledger import read_index
folder, name = Path(sys.argv[1]), sys.argv[2]
if name != "ledger.jsonl":
    (folder / "ledger.jsonl").unlink()
    (folder / name).rename(folder / "ledger.jsonl")
t0 = time.perf_counter()
index, report = read_index(folder)
print(json.dumps({"scan_s": round(time.perf_counter() - t0, 2), "lines": report.lines,
                  "jobs": len(index)}))
"""


def scan(folder: Path, name: str) -> dict[str, Any]:
    """Replay one ledger in a fresh process (a copy of the folder's files by hard link)."""
    work = Path(tempfile.mkdtemp(dir=folder.parent))
    os.link(folder / "ledger.jsonl", work / "ledger.jsonl")
    if name != "ledger.jsonl":
        os.link(folder / name, work / name)
    res = run_child([sys.executable, "-c", _SCAN, str(work), name], dict(os.environ), 300)
    with contextlib.suppress(json.JSONDecodeError):
        res.update(json.loads(res.pop("stdout_tail").strip().splitlines()[-1]))
    return res


def startup(manifest: Path, command: str) -> dict[str, Any]:
    """``--dry-run`` or ``--status`` beside the ledger: cold (no start-up index), then warm."""
    index = manifest.parent / "out" / manifest.stem / ".index"
    figures = {}
    for kind in ("cold", "warm"):
        if kind == "cold":
            shutil.rmtree(index, ignore_errors=True)
        argv = [sys.executable, "-m", "runner", str(manifest), command]
        res = run_child(argv, dict(os.environ), 300)
        figures[kind] = {k: res[k] for k in ("exit_code", "wall_s", "cpu_s", "peak_rss_mb")}
    return figures


def first_submissions(manifest: Path) -> dict[str, Any]:
    """A resumed run, cold (no start-up index) and warm: the time from its start to the
    simulator's first generate request, and its peak RSS until then."""
    index = manifest.parent / "out" / manifest.stem / ".index"
    figures = {}
    with simulator("--time-scale", "0.05", "--rate", "1000000") as base_url:

        def generates() -> int:
            requests = sim_get(base_url, "/_sim/stats")["requests"]
            return int(sum(requests.get("generate", {}).values()))

        for kind in ("cold", "warm"):
            if kind == "cold":
                shutil.rmtree(index, ignore_errors=True)
            before = generates()

            def submitted(before: int = before) -> bool:
                try:
                    return generates() > before
                except OSError:
                    return False

            argv = [sys.executable, "-m", "runner", str(manifest), "--base-url", base_url,
                    "--concurrency", "1000", "--rate", "100000", "--no-progress"]  # fmt: skip
            env = {**os.environ, "APIXO_API_KEY": "bench-key"}
            figures[kind] = run_child(argv, env, 300, until=submitted)
    return figures


def live_run(manifest: Path, run_s: float) -> dict[str, Any]:
    """A real run over the manifest with all but a few thousand jobs done in the ledger."""
    with simulator("--time-scale", "0.05", "--rate", "1000000") as base_url:
        argv = [sys.executable, "-m", "runner", str(manifest), "--base-url", base_url,
                "--concurrency", "1000", "--rate", "100000", "--deadline", str(run_s),
                "--no-progress"]  # fmt: skip
        env = {**os.environ, "APIXO_API_KEY": "bench-key"}

        def thousand_live() -> bool:
            try:
                return bool(sim_get(base_url, "/_sim/stats")["live"] >= 900)
            except OSError:
                return False

        return run_child(argv, env, run_s + 600, busy=thousand_live)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--live", type=int, default=3000, help="jobs not done in the ledger")
    p.add_argument("--run-s", type=float, default=60.0)
    p.add_argument("--skip-run", action="store_true")
    args = p.parse_args()
    figures: dict[str, Any] = {"jobs": args.jobs}
    with tempfile.TemporaryDirectory(prefix="million-") as tmp:
        root = Path(tmp)
        # Every process imports a copy of the code taken now (the tree may change meanwhile).
        (root / "code").mkdir()
        figures["code"] = snapshot_code(root / "code")
        manifest = root / "m.jsonl"
        t0 = time.perf_counter()
        write_manifest(manifest, args.jobs)
        tail = root / "tail.jsonl"  # the same jobs; its folder's ledger: the last ones to do
        os.link(manifest, tail)
        ledgers = write_ledgers(
            manifest, root / "out" / "m", args.live, args.jobs, root / "out" / "tail"
        )
        figures["setup_s"] = round(time.perf_counter() - t0, 1)
        figures["ledger_lines"] = {
            k: sum(1 for _ in v.open("rb")) for k, v in ledgers.items()
        }  # fmt: skip
        # --dry-run of the manifest with no ledger, then beside the compacted ledger
        empty = root / "empty.jsonl"
        os.link(manifest, empty)
        figures["dry_run"] = run_child(
            [sys.executable, "-m", "runner", str(empty), "--dry-run"], dict(os.environ), 300
        )
        figures["startup"] = {
            "dry_run": startup(manifest, "--dry-run"),
            "status": startup(manifest, "--status"),
        }
        # The whole ledger replayed (no start-up index: a folder of its own).
        figures["scan_compact"] = scan(ledgers["compact"].parent, "ledger.jsonl")
        figures["scan_history"] = scan(ledgers["history"].parent, "history.jsonl")
        ledgers["history"].unlink()
        figures["startup"]["resumed_run"] = first_submissions(manifest)
        figures["startup"]["resumed_run_last_jobs_to_do"] = first_submissions(tail)
        if not args.skip_run:
            figures["live_run"] = live_run(manifest, args.run_s)
            results = root / "out" / "m" / "summary.json"
            with contextlib.suppress(OSError, ValueError):
                summary = json.loads(results.read_text())
                figures["live_run"]["summary_jobs"] = summary.get("jobs")
    figures["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
