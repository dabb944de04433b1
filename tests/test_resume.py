"""Stop it any way you like, run it again: nothing lost, nothing partial, nothing paid twice.

The runner runs as a real subprocess here (so it can be SIGKILLed and signalled) against the
simulator in the test's own event loop; kill moments are chosen from the simulator's
counters, not from sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from runs import (
    assert_images_match_server,
    out_dir,
    prompts,
    run_cli,
    start_cli,
    wait_until,
)

from runner.run.connect import SENDS_FILE, read_sends
from runner.sim import SimServer
from runner.state.ledger import read_index
from runner.state.record import Phase

JOBS = 30


def _campaign(manifest: Callable[..., Path]) -> Path:
    jobs = [*prompts(JOBS - 2), {"prompt": "a triptych", "max_images": 3}]
    jobs.append({"prompt": "a big one", "resolution": "4K"})
    return manifest(jobs, limits={"concurrency": 8})


def _assert_complete(path: Path, sim: SimServer) -> dict[str, object]:
    out = out_dir(path)
    results = [orjson.loads(x) for x in (out / "results.jsonl").read_bytes().splitlines()]
    assert len(results) == JOBS and {r["state"] for r in results} == {"done"}
    assert assert_images_match_server(out, sim) == JOBS + 2  # no partial or wrong file
    assert not any(p.suffix == ".part" for p in (out / "images").rglob("*"))
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert isinstance(summary, dict)
    # A kill between writing a submission's intent and sending it counts as uncertain
    # without reaching the server: every duplicate is reported, not every report a duplicate.
    extra = sum(sim.stats.submissions_per_prompt.values()) - JOBS
    assert extra <= summary["uncertain_submissions"]["all_runs"], "every duplicate is reported"
    return summary


@pytest.mark.parametrize(
    "moment",
    ["at_start", "after_first_submissions", "mid_run", "during_downloads"],
)
async def test_sigkill_at_any_moment_then_resume_loses_nothing(sim, manifest, moment):
    path = _campaign(manifest)
    triggers = {
        "at_start": lambda: sum(sim.stats.requests.values()) >= 1,
        "after_first_submissions": lambda: sim.stats.tasks_created >= 3,
        "mid_run": lambda: sim.stats.tasks_created >= JOBS // 2,
        "during_downloads": lambda: sim.stats.images_served >= 5,
    }
    proc = await start_cli(path, sim.base_url)
    await wait_until(triggers[moment], proc)
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    in_flight_at_kill = 8  # the concurrency limit bounds what can be lost in flight
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    summary = _assert_complete(path, sim)
    assert summary["uncertain_submissions"]["all_runs"] <= in_flight_at_kill


async def test_repeated_sigkills_then_resume_pay_each_job_at_most_once_more(sim, manifest):
    path = _campaign(manifest)
    for round_ in range(4):
        proc = await start_cli(path, sim.base_url)
        target = (round_ + 1) * 5
        await wait_until(lambda t=target: sim.stats.tasks_created >= t, proc)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    _assert_complete(path, sim)


async def test_sigterm_exits_4_with_zero_uncertain_then_resume_submits_nothing_twice(sim, manifest):
    path = _campaign(manifest)
    proc = await start_cli(path, sim.base_url)
    await wait_until(lambda: sim.stats.tasks_created >= 10, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    assert proc.returncode == 4, err.decode()
    out = out_dir(path)
    index, _ = read_index(out)
    assert not [r for r in index.values() if r.phase is Phase.SUBMITTING]
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["uncertain_submissions"]["this_run"] == 0
    assert summary["exit_code"] == 4
    code, err2 = await run_cli(path, sim.base_url)
    assert code == 0, err2
    assert set(sim.stats.submissions_per_prompt.values()) == {1}
    _assert_complete(path, sim)


async def test_a_signal_as_a_finished_run_exits_leaves_its_exit_code(sim, manifest):
    """A scheduler's time limit may signal a run just as it ends: the run's exit code
    stands (it was 143, killed by the signal, after the closing line said 0)."""
    path = manifest(prompts(3))
    proc = await start_cli(path, sim.base_url)
    assert proc.stderr is not None
    async for line in proc.stderr:
        if b"finished with exit code" in line:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            break
    await proc.communicate()
    assert proc.returncode == 0


async def test_second_signal_stops_at_once(sim, manifest):
    sim.config.p_slow, sim.config.slow_s = 1.0, 30.0  # every answer hangs
    path = _campaign(manifest)
    proc = await start_cli(path, sim.base_url)
    await wait_until(lambda: sim.stats.faults["slow"] >= 1, proc)  # a submission hangs
    proc.send_signal(signal.SIGINT)  # graceful: would wait for that answer
    await asyncio.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # at once
    await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 4


async def test_deadline_stops_submitting_exits_4_and_the_next_run_finishes(sim, manifest):
    path = _campaign(manifest)
    code, err = await run_cli(path, sim.base_url, "--deadline", "0.5")
    assert code == 4, err
    assert sim.stats.tasks_created < JOBS
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert set(sim.stats.submissions_per_prompt.values()) == {1}


async def test_torn_last_ledger_line_is_tolerated(sim, manifest):
    path = _campaign(manifest)
    proc = await start_cli(path, sim.base_url)
    await wait_until(lambda: sim.stats.tasks_created >= 10, proc)
    proc.kill()
    await proc.wait()
    ledger = out_dir(path) / "ledger.jsonl"
    with ledger.open("ab") as f:
        f.write(b'{"e":"task","job":"j0000')  # a kill in the middle of a write
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    _assert_complete(path, sim)
    assert all(line.endswith(b"}") for line in ledger.read_bytes().splitlines())


async def test_times_of_the_wrong_type_in_a_ledger_are_read_as_absent(sim, manifest):
    """A hand-edited ledger whose done lines carry times as strings: later runs, the
    report and the warm start read them as absent instead of failing."""
    jobs = prompts(6)
    path = manifest(jobs)
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    ledger = out_dir(path) / "ledger.jsonl"
    lines = []
    for line in ledger.read_bytes().splitlines():
        raw = orjson.loads(line)
        for key in ("complete_ms", "create_ms", "sub_t"):
            if key in raw:
                raw[key] = str(raw[key])
        lines.append(orjson.dumps(raw))
    ledger.write_bytes(b"\n".join(lines) + b"\n")
    path = manifest(jobs + prompts(3, prefix="an added product"))
    code, err = await run_cli(path, sim.base_url, "--verbose")
    assert code == 0, err
    assert "Traceback" not in err
    assert sim.stats.tasks_created == 9, "the done jobs stay done"
    code, err = await run_cli(path, sim.base_url, "--report")
    assert code == 0, err


def _api_requests(sim: SimServer) -> int:
    return sim.stats.count("generate") + sim.stats.count("status")


def _saved_sends(out: Path) -> dict[str, Any]:
    saved = orjson.loads((out / SENDS_FILE).read_bytes())
    assert isinstance(saved, dict)
    return saved


async def test_a_run_saves_its_sends_and_the_next_counts_them_exactly(sim, manifest):
    """What the API's window still holds of the earlier run is what the next run counts:
    the requests the simulator received, not a full window assumed."""
    path = manifest(prompts(8), limits={"rate": 5000, "rate_period": 60.0})
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    first = _saved_sends(out_dir(path))
    assert first["final"] is True
    assert sum(first["counts"]) == _api_requests(sim) > 0
    path = manifest(
        prompts(8) + prompts(4, prefix="an added product"),
        limits={"rate": 5000, "rate_period": 60.0},
    )
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    both = _saved_sends(out_dir(path))
    assert sum(both["counts"]) == _api_requests(sim), "both runs' requests, all still in the window"


async def test_unreadable_saved_sends_fall_back_to_the_most_a_run_could_send(sim, manifest):
    path = manifest(prompts(4), limits={"rate": 5000, "rate_period": 60.0})
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    sends = out_dir(path) / SENDS_FILE
    for garbage in (
        b"{",
        b"[]",
        b'{"at": 1, "step_s": 0, "final": true, "counts": []}',
        b'{"at": "x", "step_s": 0.1, "final": true, "counts": [1]}',
        b'{"at": "inf", "step_s": 0.1, "final": false, "counts": [1]}',
        b'{"at": 1, "step_s": 0.1, "final": true, "counts": [-1]}',
    ):
        sends.write_bytes(garbage)
        assert read_sends(sends) is None, garbage
    sends.unlink()
    sends.symlink_to("/dev/zero")
    assert read_sends(sends) is None, "a device is never read"
    sends.unlink()
    os.mkfifo(sends)
    assert read_sends(sends) is None, "nor a pipe (it would wait for a writer)"
    sends.unlink()
    sends.write_bytes(b'{"at": "inf", "step_s": 0.1, "final": false, "counts": [1]}')
    requests = _api_requests(sim)
    path = manifest(prompts(5), limits={"rate": 5000, "rate_period": 3.0})
    code, err = await run_cli(path, sim.base_url)
    assert code == 0 and "Traceback" not in err, err
    assert _api_requests(sim) > requests
    assert read_sends(sends) is not None, "rewritten whole"


async def test_a_run_killed_right_after_a_burst_and_restarted_at_once_meets_no_429(sim, manifest):
    sim.config.rate, sim.config.rate_period_s = 40, 4.0
    limits = {"concurrency": 20, "rate": 40, "rate_period": 4.0}
    path = manifest(prompts(40), limits=limits)
    proc = await start_cli(path, sim.base_url)
    await wait_until(lambda: sim.stats.tasks_created >= 20, proc)  # the opening burst
    proc.kill()
    await proc.wait()
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert sim.stats.count(status=429) == 0
    assert set(sim.stats.submissions_per_prompt.values()) <= {1, 2}


async def test_a_run_killed_before_its_first_request_leaves_a_record_the_next_trusts(sim, manifest):
    """The record is saved before the ledger is touched: a kill between the two (the
    ledger just opened, nothing sent) costs the next run no wait for a window."""
    limits = {"rate": 5000, "rate_period": 2.0}
    path = manifest(prompts(3), limits=limits)
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    out = out_dir(path)
    requests = _api_requests(sim)
    saved = _saved_sends(out)
    # what such a kill leaves: the record saved, not final; then the ledger opened
    (out / SENDS_FILE).write_bytes(orjson.dumps({**saved, "at": time.time(), "final": False}))
    os.utime(out / "ledger.jsonl")
    path = manifest(prompts(5), limits=limits)
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert "no record of the requests" not in err
    (out / SENDS_FILE).unlink()
    (out / ".api-kind").write_text("embedded\n")  # refused as the ledger is opened: exit 2
    code, err = await run_cli(path, sim.base_url)
    assert code == 2, err
    assert read_sends(out / SENDS_FILE) is not None, "saved before the ledger was touched"
    (out / ".api-kind").write_text("api\n")
    (out / SENDS_FILE).unlink()
    os.utime(out / "ledger.jsonl")
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert "no record of the requests" in err, "a wait for a window is said"
    assert _api_requests(sim) >= requests


async def test_sends_that_cannot_be_saved_are_warned_of_once_and_the_run_goes_on(sim, manifest):
    path = manifest(prompts(3))
    out = out_dir(path)
    (out / SENDS_FILE).mkdir(parents=True)
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert err.count("cannot save the requests sent") == 1, err
    assert not (out / (SENDS_FILE + ".tmp")).exists()


async def test_demo_manifest_runs_on_the_embedded_simulator(tmp_path):
    demo = Path(__file__).parent.parent / "manifests" / "demo.yaml"
    shutil.copy(demo, tmp_path / "demo.yaml")
    code, err = await run_cli(tmp_path / "demo.yaml", "embedded", key="")
    assert code == 0, err
    images = list((tmp_path / "out" / "demo" / "images").rglob("*.png"))
    assert len(images) >= 20
