"""The engine end to end against the simulator on loopback: images, outputs, resume,
failures, limits. Runs in-process for speed; signal and kill tests live in test_resume.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
from runs import (
    assert_images_match_server,
    image_files,
    out_dir,
    prompts,
    run_cli,
    run_engine,
)

from runner.sim import SimServer
from runner.state.ledger import read_index
from runner.state.lock import FolderLock
from runner.state.record import Phase


def _results(out: Path) -> dict[str, dict[str, object]]:
    lines = (out / "results.jsonl").read_bytes().splitlines()
    return {r["id"]: r for r in map(orjson.loads, lines)}


def _summary(out: Path) -> dict[str, object]:
    data = orjson.loads((out / "summary.json").read_bytes())
    assert isinstance(data, dict)
    return data


async def test_run_writes_every_image_byte_identical_with_results_and_summary(sim, manifest):
    jobs = [*prompts(12), {"id": "board", "prompt": "four panels", "max_images": 3}]
    path = manifest(jobs, limits={"concurrency": 5})
    code, _ = await run_engine(path, sim.base_url)
    out = out_dir(path)
    assert code == 0
    assert assert_images_match_server(out, sim) == 15
    results = _results(out)
    assert len(results) == 13 and all(r["state"] == "done" for r in results.values())
    board = results["board"]
    assert len(board["files"]) == 3
    for f in board["files"]:
        data = (out / f["path"]).read_bytes()
        assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"]
    summary = _summary(out)
    assert summary["exit_code"] == 0 and summary["images"] == 15
    assert summary["jobs"] == {"total": 13, "done": 13}
    assert summary["estimated_spend_usd"] == round(15 * 0.04, 4)
    assert not list((out / ".tmp").glob("*")), "no temporary file is left behind"


async def test_each_job_is_submitted_exactly_once(sim, manifest):
    path = manifest(prompts(20), limits={"concurrency": 8})
    code, _ = await run_engine(path, sim.base_url)
    assert code == 0
    assert sim.stats.tasks_created == 20
    assert set(sim.stats.submissions_per_prompt.values()) == {1}


async def test_second_run_after_success_sends_no_submission_and_no_download(sim, manifest):
    path = manifest(prompts(10), limits={"concurrency": 4})
    assert (await run_engine(path, sim.base_url))[0] == 0
    created, files = sim.stats.tasks_created, sim.stats.images_served
    requests_before = sum(sim.stats.requests.values())
    code, _ = await run_engine(path, sim.base_url)
    assert code == 0
    assert sim.stats.tasks_created == created and sim.stats.images_served == files
    assert sum(sim.stats.requests.values()) == requests_before, "no request at all"


async def test_live_tasks_never_exceed_the_concurrency_limit(sim, manifest):
    path = manifest(prompts(30), limits={"concurrency": 6})
    assert (await run_engine(path, sim.base_url))[0] == 0
    assert 1 <= sim.stats.peak_live <= 6


async def test_request_rate_stays_within_the_window_so_no_429(sim, manifest):
    sim.config.rate, sim.config.rate_period_s = 40, 1.0
    path = manifest(prompts(25), limits={"concurrency": 25, "rate": 40, "rate_period": 1.0})
    assert (await run_engine(path, sim.base_url))[0] == 0
    assert sim.stats.count(status=429) == 0


async def test_permanent_fail_code_fails_the_job_once_and_exits_1(sim, manifest):
    jobs = [*prompts(3), {"id": "bad", "prompt": "x [fail:CONTENT_VIOLATION]"}]
    path = manifest(jobs)
    code, _ = await run_engine(path, sim.base_url)
    assert code == 1
    results = _results(out_dir(path))
    assert results["bad"]["state"] == "failed"
    assert results["bad"]["fail_code"] == "CONTENT_VIOLATION"
    assert sim.stats.submissions_per_prompt["x [fail:CONTENT_VIOLATION]"] == 1
    assert _summary(out_dir(path))["failures"] == {"CONTENT_VIOLATION": 1}


async def test_retryable_fail_code_is_resubmitted_within_the_budget_then_failed(sim, manifest):
    prompt = "y [fail:GENERATION_FAILED]"
    path = manifest([{"id": "flaky", "prompt": prompt}], retry={"failed_tasks": 2})
    code, _ = await run_engine(path, sim.base_url)
    assert code == 1
    assert sim.stats.submissions_per_prompt[prompt] == 3  # one try and two resubmissions
    # Without --retry-failed a new run leaves it alone; with it, the budget starts afresh.
    assert (await run_engine(path, sim.base_url))[0] == 1
    assert sim.stats.submissions_per_prompt[prompt] == 3
    assert (await run_engine(path, sim.base_url, retry_failed=True))[0] == 1
    assert sim.stats.submissions_per_prompt[prompt] == 6


async def test_bad_key_stops_with_exit_3_after_a_handful_of_requests(sim, manifest):
    sim.config.api_key = "the-right-key"
    path = manifest(prompts(200), limits={"concurrency": 100})
    code, _ = await run_engine(path, sim.base_url, key="a-wrong-key")
    assert code == 3
    assert sim.stats.tasks_created == 0
    assert sum(sim.stats.requests.values()) <= 5
    assert _summary(out_dir(path))["exit_code"] == 3


async def test_429_storm_is_survived_and_slows_the_runner(sim, manifest):
    sim.config.p_429 = 0.4
    path = manifest(prompts(15), limits={"concurrency": 5})
    code, engine = await run_engine(path, sim.base_url)
    assert code == 0
    assert sim.stats.count(status=429) > 0
    assert engine.counters.uncertain == 0
    assert set(sim.stats.submissions_per_prompt.values()) == {1}
    assert _summary(out_dir(path))["throttled_429"] == sim.stats.count(status=429)


async def test_5xx_answers_are_retried_and_5xx_to_submissions_counted_uncertain(sim, manifest):
    """5xx to polls are retried; a 5xx to a submission may hide a task, so it is counted
    uncertain before the job is sent again (this simulator creates none: no duplicate)."""
    sim.config.p_5xx = 0.3
    # retry.uncertain is raised: four 5xx in a row for one job would fail it UNCERTAIN.
    path = manifest(prompts(15), limits={"concurrency": 5}, retry={"uncertain": 20})
    code, engine = await run_engine(path, sim.base_url)
    assert code == 0
    assert set(sim.stats.submissions_per_prompt.values()) == {1}
    assert assert_images_match_server(out_dir(path), sim) == 15
    submit_5xx = sum(sim.stats.count("generate", status) for status in (500, 502, 503, 504))
    assert engine.counters.uncertain == submit_5xx > 0


async def test_truncated_downloads_are_resumed_and_byte_identical(sim, manifest):
    sim.config.p_truncate = 0.5
    sim.config.image_bytes = 200_000
    path = manifest(prompts(10), limits={"concurrency": 5})
    code, _ = await run_engine(path, sim.base_url)
    assert code == 0
    assert assert_images_match_server(out_dir(path), sim) == 10


async def test_lost_submission_answers_count_as_uncertain_and_are_submitted_again(sim, manifest):
    sim.config.p_reset_after = 0.3
    path = manifest(prompts(12), limits={"concurrency": 4}, retry={"uncertain": 20})
    code, engine = await run_engine(path, sim.base_url)
    assert code == 0
    extra = sum(sim.stats.submissions_per_prompt.values()) - 12
    assert extra == engine.counters.uncertain > 0
    summary = _summary(out_dir(path))
    # each lost answer hid a billed task of one image: the summary's bound covers them
    assert summary["uncertain_submissions"] == {
        "this_run": extra,
        "all_runs": extra,
        "images_at_most": extra,
    }


async def test_second_run_on_a_locked_folder_exits_5_and_sends_nothing(sim, manifest):
    path = manifest(prompts(2))
    lock = FolderLock(out_dir(path))
    lock.acquire()
    try:
        code, err = await run_cli(path, sim.base_url)
    finally:
        lock.release()
    assert code == 5
    assert "another run holds the lock" in err
    assert sum(sim.stats.requests.values()) == 0


async def test_changed_content_under_the_same_id_runs_again(sim: SimServer, manifest):
    path = manifest([{"id": "hero", "prompt": "a teapot"}])
    assert (await run_engine(path, sim.base_url))[0] == 0
    path = manifest([{"id": "hero", "prompt": "a teapot, at dusk"}])
    assert (await run_engine(path, sim.base_url))[0] == 0
    assert sim.stats.submissions_per_prompt["a teapot, at dusk"] == 1
    assert _results(out_dir(path))["hero"]["input"]["prompt"] == "a teapot, at dusk"


async def test_deleted_image_is_downloaded_again_without_resubmitting(sim, manifest):
    path = manifest(prompts(3))
    assert (await run_engine(path, sim.base_url))[0] == 0
    victim = image_files(out_dir(path))[0]
    victim.unlink()
    assert (await run_engine(path, sim.base_url))[0] == 0
    assert victim.is_file()
    assert sim.stats.tasks_created == 3


async def test_budget_cap_stops_submitting_with_exit_6(sim, manifest):
    path = manifest(prompts(10), limits={"concurrency": 2}, budget={"max_images": 4})
    code, _ = await run_engine(path, sim.base_url)
    assert code == 6
    assert sim.stats.tasks_created == 4
    assert len(image_files(out_dir(path))) == 4


async def test_a_rerun_starts_warm_from_the_ledgers_completion_times(sim: SimServer, manifest):
    """The second run's completion model holds the API timings of the jobs the first
    run finished (one kind here), before any task of its own has finished; a job edited
    since is not among them."""
    first = prompts(20)
    path = manifest(first)
    code, engine = await run_engine(path, sim.base_url)
    assert code == 0
    assert engine._poller is not None
    kind = ("2K", 1, None)
    assert engine._poller.schedule.model.seeds(kind) == 0, "nothing earlier to learn from"
    edited = [dict(first[0], prompt="an edited prompt"), *first[1:]]
    path = manifest(edited + prompts(10, prefix="a new product"))
    code, engine = await run_engine(path, sim.base_url)
    assert code == 0
    assert engine._poller is not None
    assert engine._poller.schedule.model.seeds(kind) == 19, "19 unchanged done jobs"


async def test_seeds_created_after_a_task_an_earlier_run_left_in_flight_do_not_count(
    sim: SimServer, manifest
):
    """A run stopped with tasks in flight: of the tasks created after the first of them,
    only the fast ones were seen to finish, so the next run's warm start leaves them out
    (the earlier runs' tasks created before it count)."""
    kind = ("2K", 1, None)
    first = prompts(10)
    # a short request window: the runs follow each other at once (each counts the one
    # before as still in the window)
    limits = {"rate": 10000, "rate_period": 1.0}
    assert (await run_engine(manifest(first, limits=limits), sim.base_url))[0] == 0
    sim.config.p_stuck = 0.5  # half the next tasks never end: in flight at the stop
    path = manifest(first + prompts(20, prefix="a later product"), limits=limits)
    code, _ = await run_engine(path, sim.base_url, deadline_s=0.6, drain_s=0.2)
    assert code == 4
    sim.config.p_stuck = 0.0
    index, _ = read_index(out_dir(path))
    live = [r.submitted_t for r in index.values() if r.phase is Phase.LIVE and r.submitted_t]
    ledger = (out_dir(path) / "ledger.jsonl").read_bytes().splitlines()
    done = {(e["job"], e["create_ms"]) for e in map(orjson.loads, ledger) if e["e"] == "result"}
    assert live and len(done) > 10, "some later tasks finished, some were left in flight"
    before = sum(1 for _, c in done if c < min(live) * 1000)
    code, engine = await run_engine(path, sim.base_url, deadline_s=0.3, drain_s=0.2)
    assert engine._poller is not None
    assert engine._poller.schedule.model.seeds(kind) == before < len(done)
