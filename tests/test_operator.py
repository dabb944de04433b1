"""Errors a person can act on and exit codes a cron wrapper can trust: each finding of the
operator's review, through the CLI as a subprocess (exit code and the key words)."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import orjson
from runs import TEST_KEY, out_dir, prompts, run_cli, run_cli_sync, start_cli, wait_until


def _summary(path: Path) -> dict[str, Any]:
    summary: dict[str, Any] = orjson.loads((out_dir(path) / "summary.json").read_bytes())
    return summary


async def test_an_unwritable_output_folder_is_exit_2_and_says_what_to_fix(sim, manifest):
    path = manifest(prompts(3), output={"dir": "/proc/runner-cannot-write-here"})
    code, err = await run_cli(path, sim.base_url)
    assert code == 2, err
    assert "cannot write the output" in err and "make the folder writable" in err
    assert "free" not in err, "not a full disk"
    assert sim.stats.tasks_created == 0


async def test_report_into_an_unwritable_folder_is_exit_2(sim, manifest):
    path = manifest(prompts(1), output={"dir": "/proc/runner-cannot-write-here"})
    code, err = await run_cli(path, sim.base_url, "--report")
    assert code == 2, err
    assert "make the folder writable" in err


async def test_a_callback_port_in_use_is_exit_2_naming_the_setting(sim, manifest):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = manifest(
            prompts(2), api={"mode": "callback", "callback": {"listen": f"127.0.0.1:{port}"}}
        )
        code, err = await run_cli(path, sim.base_url)
    assert code == 2, err
    assert "api.callback.listen" in err and "another port" in err
    assert "free" not in err
    assert sim.stats.tasks_created == 0


async def test_the_budget_cap_is_exit_6_every_time_until_raised(sim, manifest):
    path = manifest(prompts(5), budget={"max_images": 2})
    for _ in range(2):  # running again changes nothing
        code, err = await run_cli(path, sim.base_url)
        assert code == 6, err
        assert "3 jobs remain unsubmitted" in err
        assert "run the same command again" not in err
    assert sim.stats.tasks_created == 2
    raised = manifest(prompts(5), budget={"max_images": 5})
    code, err = await run_cli(raised, sim.base_url)
    assert code == 0, err


async def test_a_refused_key_is_exit_3_and_the_line_agrees_with_the_summary(sim, manifest):
    sim.config.api_key = "the-right-key-0123456789"
    path = manifest(prompts(20))
    code, err = await run_cli(path, sim.base_url, key=TEST_KEY)
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    summary = _summary(path)
    assert summary["jobs"]["pending"] == 20
    assert "20 remaining of 20 jobs" in last


async def test_no_key_is_needed_when_every_job_is_done(sim, manifest):
    path = manifest(prompts(3))
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    requests = sim.stats.count()
    code, err = await run_cli(path, sim.base_url, key="")
    assert code == 0, err
    assert sim.stats.count() == requests, "nothing was sent"


async def test_no_key_with_paid_work_left_is_exit_2_before_anything_is_sent(sim, manifest):
    path = manifest(prompts(3))
    code, err = await run_cli(path, sim.base_url, key="")
    assert code == 2, err
    assert "no API key" in err and "APIXO_API_KEY" in err
    assert sim.stats.count() == 0


async def test_a_torn_ledger_line_is_told_in_plain_words(sim, manifest):
    path = manifest(prompts(3))
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    with (out_dir(path) / "ledger.jsonl").open("ab") as f:
        f.write(b'{"e": "submit", "job": "x", "t"')  # a kill mid-write
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert "the last line was cut short by a kill; it is ignored" in err
    assert "=True" not in err


async def test_a_404_to_a_submission_is_exit_2_and_the_jobs_stay_pending(sim, manifest):
    """A wrong base path (or model): the API answers 404 to the first submission. That is
    the configuration's fault, not the jobs': exit 2, nothing failed, and once the URL is
    fixed the same jobs run."""
    path = manifest(prompts(3))
    wrong = sim.base_url.replace("/api/v1", "/api/v2")
    code, err = await run_cli(path, wrong)
    assert code == 2, err
    assert "check api.base_url and api.model" in err
    assert _summary(path)["jobs"].get("failed", 0) == 0
    assert err.strip().splitlines()[-1].count("finished with exit code 2") == 1
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err


async def test_retry_failed_refused_by_the_cap_is_exit_6_and_dry_run_shows_the_room(sim, manifest):
    sim.config.url_ttl_s = 0.0  # every job ends lost: paid, images gone
    path = manifest(prompts(3), budget={"max_images": 4})
    code, err = await run_cli(path, sim.base_url)
    assert code == 1, err
    code, out, _ = run_cli_sync(path, "--dry-run")
    assert "max_images 4 (3 images paid or uncertain; room for 1 more)" in out
    sim.config.url_ttl_s = 1e6
    code, err = await run_cli(path, sim.base_url, "--retry-failed")
    assert code == 6, err
    assert sim.stats.tasks_created == 4, "one retry fitted under the cap, the others not"
    lines = err.strip().splitlines()
    assert "the budget cap is reached: 2 jobs remain unsubmitted" in lines[-2]
    assert "finished with exit code 6" in lines[-1], "the closing line is the last"


async def test_after_a_second_signal_the_closing_line_does_not_reuse_an_old_summary(sim, manifest):
    path = manifest(prompts(2))
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    sim.config.p_slow, sim.config.slow_s = 1.0, 30.0  # every answer hangs
    edited = manifest(prompts(2, prefix="another prompt"))
    proc = await start_cli(edited, sim.base_url)
    await wait_until(lambda: sim.stats.faults["slow"] >= 1, proc)
    proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, raw = await proc.communicate()
    err = raw.decode()
    assert proc.returncode == 4
    last = err.strip().splitlines()[-1]
    assert "stopped at once, summary.json not rewritten" in last
    assert "2 done" not in last


async def test_one_folder_keeps_to_one_kind_of_api(sim, manifest):
    """Images of the built-in simulator must never count as the real API's paid work."""
    path = manifest(prompts(2))
    code, err = await run_cli(path, "embedded", key="")
    assert code == 0, err
    code, err = await run_cli(path, sim.base_url)
    assert code == 2, err
    assert "holds work done on the built-in simulator" in err
    assert "another output.dir" in err
    assert sim.stats.count() == 0


async def test_an_edited_job_in_flight_finishes_its_paid_task_first(sim, manifest):
    jobs = [{"id": f"j{i}", "prompt": f"a teapot {i}"} for i in range(4)]
    path = manifest(jobs, limits={"concurrency": 4})
    code, err = await run_cli(path, sim.base_url, "--deadline", "0.05", "--drain", "0")
    assert code == 4, err
    created = sim.stats.tasks_created
    assert created == 4
    jobs[0]["prompt"] = "a teapot at dusk"
    path = manifest(jobs, limits={"concurrency": 4})
    code, out, _ = run_cli_sync(path, "--dry-run")
    assert "changed since done: 1 jobs run again" in out and "j0" in out
    code, err = await run_cli(path, sim.base_url)
    assert code == 4, err
    assert "1 edited jobs finished their earlier content first" in err
    assert sim.stats.tasks_created == 4, "the paid task was collected, not abandoned"
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert sim.stats.tasks_created == 5
    summary = _summary(path)
    assert summary["images_paid"] == sim.stats.images_billed == 5
